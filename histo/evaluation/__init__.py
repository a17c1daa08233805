"""What every stage after training reads and computes: prediction files, run directories, metrics
(image and patient level), patient-bootstrap intervals, McNemar's test, calibration, the paper's numbers."""
