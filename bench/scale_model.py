#!/usr/bin/env python3
"""The paper model of expert parallelism in docs/scale-out.md: for a MoE layer split over N ranks (GPUs), what
one decode step moves and computes per rank, and when splitting the experts pays.

Every input is a constant below, stated with where it comes from; nothing here is measured. Per MoE layer and
decode step, with B tokens on each rank (data-parallel attention, as expert-parallel serving runs it):
  weights read per rank   W = (experts the rank holds that get a token) x 3 H F x bytes per weight
  compute per rank        C = B k 6 H F FLOP (every rank's tokens' expert work, spread evenly)
  bytes sent per rank     D = B k H (N - 1) / N x (dispatch bytes per value + combine bytes per value)
  step time (EP)          max(W / HBM, C / peak) + ALPHA + D / link
  step time (one GPU)     max(W1 / HBM, C / peak), W1 = experts its B tokens touch, when the layer fits at all
"EP pays" when the EP step is shorter than reading the experts on one GPU would be, per token.

    python3 bench/scale_model.py     prints the markdown tables pasted in docs/scale-out.md
"""

# Hardware (vendor data sheets): H100 SXM HBM3 3.35 TB/s, dense BF16 989 TFLOP/s, NVLink 4 900 GB/s per GPU
# (450 GB/s each way); MI300X HBM3 5.3 TB/s, Infinity Fabric (xGMI) 7 links x 64 GB/s each way; InfiniBand
# NDR 400 Gb/s = 50 GB/s per GPU with one NIC each (RoCE at 400 Gb/s the same).
HW = {
    "H100 + NVLink (N <= 8)": dict(hbm=3.35e12, peak=989e12, link=450e9),
    "MI300X + xGMI (N <= 8)": dict(hbm=5.3e12, peak=1307e12, link=7 * 64e9),
    "H100 + InfiniBand NDR (N > 8)": dict(hbm=3.35e12, peak=989e12, link=50e9),
}
# An exchange (dispatch + combine: two all-to-alls) costs ALPHA plus its bytes over the link. ALPHA is an
# ASSUMPTION (about 10 us per all-to-all, small-message latency of GPU-initiated collectives), not a measurement.
# Check against DeepEP's published low-latency figures (as issue 18 quotes them): EP8, 128 tokens per rank,
# DeepSeek-V3's layer: dispatch ~80 us + combine ~100 us = 180 us, where this model says ALPHA + 19.3 MB /
# 450 GB/s = 63 us over NVLink: real exchanges are slower than the model (DeepEP's path is RDMA), so read the
# exchange columns as lower bounds.
ALPHA_US = 20.0
DEEPEP_EP8_128_US = 180.0

# Layers. DeepSeek-V3 (its config.json): H 7168, routed expert F 2048, 256 routed experts, top-8, one shared
# expert, 58 MoE layers; weights FP8 (1 byte), dispatch FP8 + scales (~1 byte a value), combine BF16.
# ZAYA1-74B-like: its layer shapes are not in what we have; ASSUMED here: ZAYA1-8B's routing (16 experts,
# top-1) at H 4096, F 8192, 40 MoE layers (16 x 3 x 4096 x 8192 x 40 = 64 B expert parameters, ~150 GB in BF16
# with its dense part), BF16 weights and exchanges.
LAYERS = {
    "DeepSeek-V3": dict(H=7168, F=2048, E=256, k=8, wbytes=1, dispatch=1, combine=2, layers=58),
    "ZAYA1-74B-like (assumed shapes)": dict(H=4096, F=8192, E=16, k=1, wbytes=2, dispatch=2, combine=2, layers=40),
}


def touched(experts, tokens, k):
    """Expected number of distinct experts `tokens` tokens choose (k each, uniform routing)."""
    return experts * (1.0 - (1.0 - k / experts) ** tokens)


def step(layer, hw, n, b):
    H, F, E, k = layer["H"], layer["F"], layer["E"], layer["k"]
    expert_bytes = 3 * H * F * layer["wbytes"]
    held = E / n
    # the rank's experts get tokens from every rank: B N k / E tokens each on average
    w = touched(held, b * n * k / E * held, 1) if held >= 1 else 1.0
    w = min(held, w) * expert_bytes if held >= 1 else expert_bytes
    c = b * k * 6 * H * F
    d = b * k * H * (n - 1) / n * (layer["dispatch"] + layer["combine"])
    comm = ALPHA_US * 1e-6 + d / hw["link"] if n > 1 else 0.0
    compute = max(w / hw["hbm"], c / hw["peak"])
    one = touched(E, b, k) * expert_bytes
    return dict(w=w, c=c, d=d, comm=comm, compute=compute, ep=compute + comm,
                one=max(one / hw["hbm"], c / hw["peak"]), fits=E * expert_bytes)


def main():
    print(f"Check: DeepSeek-V3 EP8, 128 tokens per rank: the model's exchange "
          f"{step(LAYERS['DeepSeek-V3'], HW['H100 + NVLink (N <= 8)'], 8, 128)['comm'] * 1e6:.0f} us, DeepEP's "
          f"published dispatch + combine {DEEPEP_EP8_128_US:.0f} us")
    for lname, layer in LAYERS.items():
        print(f"\n{lname}: H {layer['H']}, F {layer['F']}, {layer['E']} experts, top-{layer['k']}; one MoE layer's "
              f"experts {layer['E'] * 3 * layer['H'] * layer['F'] * layer['wbytes'] / 1e9:.1f} GB, all "
              f"{layer['layers']} layers {layer['layers'] * layer['E'] * 3 * layer['H'] * layer['F'] * layer['wbytes'] / 1e9:.0f} GB\n")
        print("| interconnect | ranks N | tokens per rank B | expert GB per rank (all layers) | MB sent per rank per "
              "layer | exchange us | experts us (read or compute) | EP step us per layer | one GPU us per layer "
              "(if it fit) | exchange share |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for hname, hw in HW.items():
            ranks = [8] if "N <= 8" in hname else [16, 64, 256]
            for n in ranks:
                if n > layer["E"]:
                    continue
                for b in (1, 16, 128):
                    s = step(layer, hw, n, b)
                    gb = layer["layers"] * s["fits"] / n / 1e9
                    print(f"| {hname} | {n} | {b} | {gb:.1f} | {s['d'] / 1e6:.2f} | {s['comm'] * 1e6:.1f} | "
                          f"{s['compute'] * 1e6:.1f} | {s['ep'] * 1e6:.1f} | {s['one'] * 1e6:.1f} | "
                          f"{s['comm'] / s['ep']:.0%} |")


if __name__ == "__main__":
    main()
