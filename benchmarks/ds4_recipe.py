"""DS4 recipe arms: train nets 0..N-1 of a DS4 config with overrides, print clean accuracy and
attack success by trigger family and mapping (docs/ds4.md, the recipe table).

    python benchmarks/ds4_recipe.py ds4-trojan 16 recipe.learning_rate=1e-2 recipe.max_epochs=30 \
        recipe.check_every=30
"""
import sys, time, numpy as np
from mlds_jax.config.load import load_config
from mlds_jax.tasks import digits
from mlds_jax.train import vision
from mlds_jax.train.population import Population
name, n, *over = sys.argv[1:]; n = int(n)
cfg = load_config(name, over)
split = vision.split_of(cfg.seed)
pop = Population(cfg, split, slots=n)
t = time.perf_counter(); rows = []
for done in pop.run(range(n)):
    for i in range(len(done)):
        tr = digits.draw_trigger(cfg.seed, int(done.net_id[i]), split.train_labels)
        rows.append((int(done.net_id[i]), tr.family, tr.mapping, done.val_accuracy[i, 0], done.val_accuracy[i, -1], int(done.status[i])))
sec = time.perf_counter() - t
clean = np.array([r[3] for r in rows]); asr = np.array([r[4] for r in rows])
print(name, over, f"{n} nets {sec:.0f}s ({sec/n:.1f} s/net, {n*cfg.recipe.max_epochs*1440/sec:.0f} img-steps/s)")
print(f"  clean acc median {np.median(clean):.3f} min {clean.min():.3f} mean {clean.mean():.3f} >=0.95: {(clean>=0.95).mean():.2f}; usable {np.mean([r[5]==1 for r in rows]):.2f}")
for fam in digits.FAMILIES:
    a = [r[4] for r in rows if r[1] == fam]
    print(f"  asr {fam}: median {np.median(a):.3f} n={len(a)}", end="")
for m in digits.MAPPINGS:
    a = [r[4] for r in rows if r[2] == m]
    print(f"  | {m}: median {np.median(a):.3f}", end="")
print()
