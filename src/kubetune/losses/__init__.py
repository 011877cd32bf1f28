"""The training objectives' mathematics, free of Trainers and data loading.

- `logps`: token log-probabilities — the one implementation every stage uses (sft's fused loss,
  dpo/kto/rm scores, PPO's rollouts and updates).
- `causal_lm`: the causal-LM loss and sequence log-probs without full-vocabulary logits.
- `preference`: DPO's family (sigmoid, hinge, ipo, orpo, simpo), KTO and the reward model's
  Bradley–Terry loss.
- `ppo`: PPO's clipped policy and value losses, entropy.
"""
