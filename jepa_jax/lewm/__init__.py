"""LeWorldModel: encoder + predictor trained end to end from pixels with SIGReg (REFERENCE §9)."""
