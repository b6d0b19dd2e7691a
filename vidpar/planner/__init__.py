"""The planner: a cost and memory model of Wan inference that ranks parallel layouts (``vidpar plan``)."""

from .comm_model import cfg_exchange_bytes, predict_comm_bytes, predict_step_comm_bytes, predict_vae_comm_bytes

__all__ = ["cfg_exchange_bytes", "predict_comm_bytes", "predict_step_comm_bytes", "predict_vae_comm_bytes"]
