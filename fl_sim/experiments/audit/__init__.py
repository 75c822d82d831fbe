"""Visual privacy audit of DP-SGD: informed-adversary extraction, diffusion reconstruction, metrics and bounds vs μ."""

from fl_sim.experiments.audit.bounds import DELTA, baseline_kappa, eps_for_mu, gdp_delta, rero_bound
from fl_sim.experiments.audit.evaluation import FaceCalibration, equal_error_threshold, face_calibration, unrelated_ssim
from fl_sim.experiments.audit.plots import plot_metrics, plot_panel
from fl_sim.experiments.audit.reconstruct import WienerFilter, diffusion_reconstruct, t_for_std
from fl_sim.experiments.audit.run import (METHODS, AuditResult, AuditSettings, audit_targets, calibration_spec, run_audit,
                                          run_settings, validate)
from fl_sim.experiments.audit.threat import clip_and_noise, estimate_noise_std, extract_first_layer, noise_std, observe

__all__ = ["DELTA", "METHODS", "AuditResult", "AuditSettings", "FaceCalibration", "WienerFilter", "audit_targets",
           "baseline_kappa", "calibration_spec", "clip_and_noise", "diffusion_reconstruct", "eps_for_mu",
           "equal_error_threshold", "estimate_noise_std", "extract_first_layer", "face_calibration", "gdp_delta",
           "noise_std", "observe", "plot_metrics", "plot_panel", "rero_bound", "run_audit", "run_settings",
           "t_for_std", "unrelated_ssim", "validate"]
