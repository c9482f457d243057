"""SimCLR (METHODS.md 2.1): projector Linear-ReLU-Linear without BN, NT-Xent over both views."""

from __future__ import annotations

import ml_collections

from cl_ssl import losses
from cl_ssl.objectives.base import Objective, make_model, make_views


def make(config: ml_collections.ConfigDict) -> Objective:
    """SimCLR from ``config.simclr`` (temperature, proj_hidden_dim, proj_output_dim)."""
    c = config.simclr
    model = make_model(
        config, hidden_dims=(c.proj_hidden_dim,), out_dim=c.proj_output_dim, batch_norm=False
    )

    def loss(out1, out2):
        value = losses.nt_xent(out1["projection"], out2["projection"], temperature=c.temperature)
        return value, {"nt_xent": value}

    return Objective(name="simclr", model=model, views=make_views(config), loss=loss)
