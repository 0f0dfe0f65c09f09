"""Model monitoring: feature and prediction drift, calibration and expected performance."""
