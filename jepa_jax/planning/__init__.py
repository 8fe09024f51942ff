"""Stage 3: planners (cem, mppi, gradient), objectives, the Wall MPC evaluation (evaluate,
oracle), the stage entry point (run.run_planning), throughput benchmark and visualisation."""
