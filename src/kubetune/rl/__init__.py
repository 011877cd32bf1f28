"""Reinforcement learning from rewards (the ppo stage's parts; its losses are in `kubetune.losses.ppo`).

- `gae`: per-token rewards with the KL penalty, GAE advantages and returns, masked whitening.
- `kl_control`: the KL coefficient, fixed or adapted towards `ppo_target`.
- `rollout`: sample responses, log-probs under policy and reference, values; the prompt order.
- `rewards`: reward sources (reward model, HTTP endpoint, Python function), score normalisation.
- `evaluate`: the mean reward of a policy's generations (`eval_reward_mean`).
- `checkpoint`: exact save and resume of a PPO run.

Modules are imported where used: `kubetune.rl.reward_ref` is read by the preflight rules
(`kubetune.validate`), which must stay free of torch.
"""
