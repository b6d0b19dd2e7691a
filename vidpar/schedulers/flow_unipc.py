"""UniPC multistep sampler (bh2, order 2, data prediction) for flow-matching models: Wan's default scheduler.

Matches diffusers' ``UniPCMultistepScheduler`` configured as in Wan's diffusers checkpoints
(``prediction_type="flow_prediction"``, ``use_flow_sigmas=True``, ``solver_order=2``, ``solver_type="bh2"``,
``predict_x0=True``, ``lower_order_final=True``, ``final_sigmas_type="zero"``, ``timestep_spacing="linspace"``,
no thresholding, no disabled correctors, ``flow_shift`` 3.0 for 480p / 5.0 for 720p). Only that configuration is
implemented. For fp32 inputs every output equals diffusers' bit for bit: the scalar coefficients are computed with
the same fp32 tensor ops in the same order (this is why the code keeps diffusers' operation order).

Precision: ``model_output`` and ``sample`` are upcast to fp32, all math is fp32 and the history is kept in fp32;
the result is cast back to ``sample.dtype``. diffusers instead computes in the promoted dtype of its inputs (all
bf16 when both are bf16; with fp32 latents and a bf16 model output it rounds ``sigma * model_output`` to bf16), so
with bf16 inputs results differ from diffusers at bf16 rounding level. Keep latents in fp32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._base import FlowSchedulerBase, clone_opt


def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow matching: ``x = alpha * x0 + sigma * noise`` with ``alpha = 1 - sigma``."""
    return 1 - sigma, sigma


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    """Half log-SNR ``log(alpha) - log(sigma)`` (``+inf`` at sigma 0)."""
    alpha, sigma = _alpha_sigma(sigma)
    return torch.log(alpha) - torch.log(sigma)


class FlowUniPCScheduler(FlowSchedulerBase):
    """UniPC-2 (bh2) predictor-corrector over a shifted flow-matching sigma schedule.

    Args:
        flow_shift: timestep shift ``s``: ``sigma' = s * sigma / (1 + (s - 1) * sigma)`` (Wan: 3.0 for 480p,
            5.0 for 720p).
        num_train_timesteps: training timesteps (1000 for Wan); ``timestep = sigma * num_train_timesteps``.
    """

    kind = "flow_unipc"
    solver_order = 2

    def __init__(self, flow_shift: float = 3.0, num_train_timesteps: int = 1000) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, shift=flow_shift)
        # History of data predictions x0 (oldest first) and the order used by the last predictor.
        self.model_outputs: list[torch.Tensor | None] = [None] * self.solver_order
        self.last_sample: torch.Tensor | None = None
        self.lower_order_nums = 0
        self.this_order = 0

    @property
    def flow_shift(self) -> float:
        return self.shift

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build the schedule and reset the solver state.

        Sets ``timesteps`` ``[N]`` int64 on ``device`` and ``sigmas`` ``[N + 1]`` fp32 on CPU (last one 0).
        """
        n = int(num_inference_steps)
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        # float64 numpy exactly as diffusers, so float32 sigmas and truncated integer timesteps agree bit for bit.
        sigmas = np.linspace(1, 1 / self.num_train_timesteps, n + 1)[:-1]
        sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        # sigma = 1 exactly would give log(alpha) = log(0) in the solver; diffusers nudges it by 1e-6.
        if np.fabs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6
        timesteps = sigmas * self.num_train_timesteps
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        # int64 conversion truncates toward zero, like diffusers' ``.to(torch.int64)``.
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = n
        self.step_index = 0
        self.model_outputs = [None] * self.solver_order
        self.last_sample = None
        self.lower_order_nums = 0
        self.this_order = 0

    def _coefficients(self, sigma_t: torch.Tensor, sigma_s0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Scalars of one bh2 update from ``sigma_s0`` to ``sigma_t``: ``(h, hh, h_phi_1, B_h, alpha_t)``."""
        alpha_t, sigma_t = _alpha_sigma(sigma_t)
        h = _lambda(sigma_t) - _lambda(sigma_s0)
        hh = -h  # data-prediction (x0) form
        h_phi_1 = torch.expm1(hh)
        b_h = torch.expm1(hh)  # bh2
        return h, hh, h_phi_1, b_h, alpha_t

    def _predictor(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        """UniP-``order`` step from ``sigmas[i]`` to ``sigmas[i + 1]`` using the x0 history.

        sample ``[B, ...]`` fp32 -> ``[B, ...]`` fp32.
        """
        i, dev = self.step_index, sample.device
        sigma_t, sigma_s0 = self.sigmas[i + 1].to(dev), self.sigmas[i].to(dev)
        h, _, h_phi_1, b_h, alpha_t = self._coefficients(sigma_t, sigma_s0)
        m0 = self.model_outputs[-1]
        x_t = sigma_t / sigma_s0 * sample - alpha_t * h_phi_1 * m0
        if order == 2:
            rk = (_lambda(self.sigmas[i - 1].to(dev)) - _lambda(sigma_s0)) / h
            d1 = ((self.model_outputs[-2] - m0) / rk).unsqueeze(1)  # [B, K=1, ...]
            rhos_p = torch.full((1,), 0.5, dtype=sample.dtype, device=dev)  # UniP-2 uses rho = 1/2
            # einsum (not rho * d1) to reproduce diffusers' rounding exactly.
            x_t = x_t - alpha_t * b_h * torch.einsum("k,bk...->b...", rhos_p, d1)
        return x_t

    def _corrector(self, x0: torch.Tensor, last_sample: torch.Tensor, sample: torch.Tensor, order: int) -> torch.Tensor:
        """UniC-``order`` correction of ``sample`` (at ``sigmas[i]``) using the new x0 prediction ``x0`` there.

        All ``[B, ...]`` fp32; ``last_sample`` is the sample at ``sigmas[i - 1]`` that the last predictor started from.
        """
        i, dev = self.step_index, sample.device
        sigma_t, sigma_s0 = self.sigmas[i].to(dev), self.sigmas[i - 1].to(dev)
        h, hh, h_phi_1, b_h, alpha_t = self._coefficients(sigma_t, sigma_s0)
        m0 = self.model_outputs[-1]
        if order == 1:
            rhos_c = torch.full((1,), 0.5, dtype=sample.dtype, device=dev)
            corr_res: torch.Tensor | int = 0
        else:  # order 2: solve the 2x2 order conditions for (rho_1, rho_t)
            rk = (_lambda(self.sigmas[i - 2].to(dev)) - _lambda(sigma_s0)) / h
            rks = torch.stack([rk, torch.ones((), device=dev)])
            h_phi_k = h_phi_1 / hh - 1
            b1 = h_phi_k * 1 / b_h
            h_phi_k = h_phi_k / hh - 1 / 2
            b2 = h_phi_k * 2 / b_h
            r = torch.stack([torch.pow(rks, 0), torch.pow(rks, 1)])
            rhos_c = torch.linalg.solve(r, torch.stack([b1, b2])).to(dev).to(sample.dtype)
            d1 = ((self.model_outputs[-2] - m0) / rk).unsqueeze(1)  # [B, K=1, ...]
            corr_res = torch.einsum("k,bk...->b...", rhos_c[:-1], d1)
        x_t = sigma_t / sigma_s0 * last_sample - alpha_t * h_phi_1 * m0
        return x_t - alpha_t * b_h * (corr_res + rhos_c[-1] * (x0 - m0))

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor | None, sample: torch.Tensor
    ) -> torch.Tensor:
        """One sampler step from ``sigmas[i]`` to ``sigmas[i + 1]``.

        Args:
            model_output: ``[B, ...]`` predicted velocity (noise - x0) at ``sample``; batch dim first.
            timestep: ``timesteps[i]`` (checked against the internal counter), or None to skip the check.
            sample: ``[B, ...]`` current latents at ``sigmas[i]``.
        Returns:
            ``[B, ...]`` latents at ``sigmas[i + 1]``, in ``sample.dtype``.

        The update is elementwise (scalar coefficients only), so each rank may step its own shard of the latents.
        Like diffusers, the (fp32) ``sample`` is kept by reference for the next corrector: do not modify it in place.
        """
        i = self._check_step(timestep)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output {tuple(model_output.shape)} != sample {tuple(sample.shape)}")
        out_dtype = sample.dtype
        sample = sample.float()
        x0 = sample - self.sigmas[i].to(sample.device) * model_output.float()  # flow prediction -> data prediction
        if i > 0 and self.last_sample is not None:
            sample = self._corrector(x0, self.last_sample, sample, self.this_order)
        self.model_outputs = self.model_outputs[1:] + [x0]
        # Lower order for the first step (no history) and the last one (lower_order_final: stable at sigma 0).
        self.this_order = min(self.solver_order, self.num_inference_steps - i, self.lower_order_nums + 1)
        self.last_sample = sample
        prev_sample = self._predictor(sample, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.solver_order)
        self.step_index = i + 1
        return prev_sample.to(out_dtype)

    def state_dict(self) -> dict[str, Any]:
        """All mutable state as tensors (cloned) and plain values; ``torch.save``-able with ``weights_only=True``."""
        state = self._base_state()
        state.update(
            model_outputs=[clone_opt(m) for m in self.model_outputs],
            last_sample=clone_opt(self.last_sample),
            lower_order_nums=self.lower_order_nums,
            this_order=self.this_order,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; continuing then gives bitwise the same results as never having stopped."""
        self._load_base_state(state)
        if len(state["model_outputs"]) != self.solver_order:
            raise ValueError(f"expected {self.solver_order} model outputs, got {len(state['model_outputs'])}")
        self.model_outputs = [clone_opt(m) for m in state["model_outputs"]]
        self.last_sample = clone_opt(state["last_sample"])
        self.lower_order_nums = int(state["lower_order_nums"])
        self.this_order = int(state["this_order"])
