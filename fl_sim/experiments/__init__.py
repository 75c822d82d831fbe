"""Upper floor: experiments a user runs on top of federations (benches, sweeps, the DP-SGD audit, priors, reports)."""
