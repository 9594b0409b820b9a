"""An attack of one's own: BIM (Kurakin et al. 2017), iterative FGSM = PGD-L-inf without the random start.

satlab's attacks are one gradient routine (`satlab.attacks.gradient.Attack`: norm, steps, step size, random
start, momentum, loss, 8-bit rounding) and a registry of names -> defaults (`satlab.attacks.register_attack`). Inside
satlab, adding BIM is the registry line below in `satlab/attacks/__init__.py` plus `conf/attack/bim.yaml` with
`_target_: satlab.attacks.create_attack`. From outside, this module registers the same entry (`register_attack`) when it is imported, and
`conf/attack/bim.yaml` of docs/examples points its `_target_` at `create_attack` here, so Hydra imports it first.
"""

from __future__ import annotations

from satlab import attacks

attacks.register_attack("bim", norm="linf", random_start=False)  # what the registry line inside satlab says

create_attack = attacks.create_attack
