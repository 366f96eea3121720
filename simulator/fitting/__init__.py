"""Fitting users' preference dynamics from interaction logs (maximum likelihood of each
user's next interaction under the scenario's choice model), family selection by held-out
likelihood, and uncertainty (bootstrap over users, profile-likelihood identifiability)."""
