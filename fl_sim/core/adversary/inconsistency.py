"""Model inconsistency (Pasquini et al., CCS 2022): the target gets the true model, every other user a model whose
last ReLU before the classifier is dead, so their updates vanish and the aggregate carries the target's alone."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fl_sim.core.adversary.base import Recovered, State, Tactic, aggregate_update, fedavg_weights, register_tactic

# Per built-in model: the parameters that make every unit of the last ReLU before the classifier output 0 for any
# input (a norm layer's scale 0 and shift -1, or a linear layer's weights 0 and bias -1, feed the ReLU a constant
# -1). Its gradient is then 0, so every parameter before it gets a zero gradient; the classifier's input is 0, so
# its weights get none either. Only the classifier's bias still moves (softmax(b) - y: it reads the labels).
DEAD_RELU: dict[str, dict[str, float]] = {
    "convnet": {"features.7.weight": 0.0, "features.7.bias": -1.0},  # the third GroupNorm (BatchNorm) -> ReLU
    "resnet": {"stages.2.n2.weight": 0.0, "stages.2.n2.bias": -1.0,  # relu(n2(c2(h)) + skip(x)) = relu(-2)
               "stages.2.skip.1.weight": 0.0, "stages.2.skip.1.bias": -1.0},
    "mlp": {"fc2.weight": 0.0, "fc2.bias": -1.0},
}


@register_tactic
class Inconsistency(Tactic):
    """The target gets the global model; every other user of the round a "dead" one (``dead_state``)."""

    name = "inconsistency"
    help = "model inconsistency (Pasquini et al. 2022): the others' updates vanish from the aggregate"
    one_target_per_round = True

    def dead_recipe(self) -> dict[str, float]:
        """What to set in the other users' models: a built-in model's dead-ReLU recipe, else (a plugin's model)
        the last weight matrix at 0 (then no gradient reaches any earlier layer; that matrix itself mixes)."""
        recipe = DEAD_RELU.get(self.model.name, {})
        if recipe and set(recipe) <= set(self.model.parameters):
            return recipe
        matrices = [k for k in self.model.parameters if k.endswith("weight")]
        return {matrices[-1]: 0.0} if matrices else {}

    def inexact(self) -> tuple[str, ...]:
        """Parameters the other users still move: the last layer's bias (and, for the fallback, its weights)."""
        recipe, last = self.dead_recipe(), self.model.parameters[-1:]
        if recipe == DEAD_RELU.get(self.model.name):
            return last
        return tuple(dict.fromkeys([*recipe, *last]))

    def dead_state(self, global_state: State) -> State:
        """The global model with the dead-ReLU recipe applied."""
        out = dict(global_state)
        for k, value in self.dead_recipe().items():
            out[k] = np.full_like(np.asarray(global_state[k]), value)
        return out

    def craft(self, rnd: int, global_state: State, users: list[str], targets: list[str]) -> dict[str, State]:
        dead = self.dead_state(global_state)
        return {u: global_state if u in targets else dead for u in users}

    def recover(self, rnd: int, sent: Mapping[str, State], examples: Mapping[str, int], aggregate: State, *,
                global_state: State, targets: list[str],
                replies: Mapping[str, State] | None = None) -> list[Recovered]:
        # Only the aggregate and what was sent: Σ_u w_u Δ_u = Σ_u w_u θ_sent,u − aggregate, where every Δ_u but
        # the target's is 0 outside the inexact layers; dividing by the target's FedAvg weight undoes FedAvg.
        if len(targets) != 1 or targets[0] not in examples:
            return []
        (target,) = targets
        w = fedavg_weights(examples)[target]
        total = aggregate_update(sent, examples, aggregate, self.model.parameters)
        update = {k: v / w for k, v in total.items()}
        inexact = self.inexact()
        exact = tuple(k for k in self.model.parameters if k not in inexact)
        return [Recovered(target, update, dict(sent[target]), exact, inexact)]
