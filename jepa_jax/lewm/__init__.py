"""LeWorldModel: encoder + predictor trained end to end from pixels with SIGReg (docs/reference.md §9)."""
