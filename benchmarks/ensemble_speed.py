#!/usr/bin/env python
"""Batched ZLP ensemble (eelsnb, Lightning) versus the sequential one-network-per-replica way of the reference method.

Same data (a synthetic SI from `eelsnb.synthetic`, thickness clusters from `eelsnb.cluster`, replicas and training
set from `eelsnb.replicas`), same architecture (inputs -> 10 -> 15 -> 5 -> 1, sigmoid), same number of epochs
(full-batch Adam steps), same loss. Prints one JSON line:

- `batched_s`: eelsnb's Lightning path, sigmoid units (the reference architecture), all replicas at once.
- `sequential_s`: one `nn.Sequential` after another, as the reference (EELSfitter v3) trains them: per epoch a
  forward on the training points, the monotonicity term group by group, backward, Adam step, then an evaluation pass
  (validation points and monotonicity term). Adam lr 1e-3, constant; inputs scaled to [0.1, 0.9] over all points.
- `sequential_lean_s_est`: a leaner sequential loop (one forward on all points per epoch, validation read from it),
  timed on `--lean-replicas` replicas and scaled to all of them; `speedup_vs_lean` = sequential_lean_s_est / batched_s.
- `batched_tanh_s`: the default recipe (tanh units).
- Convergence: the median over replicas of each replica's best validation chi^2/N so far, per epoch. The converged
  value is the lowest final median among the runs; `*_epochs_to_converge` is the first epoch at which a run is
  within 10% of it (null: never within the run). `*_epochs_to_10pct_of_own_final` uses each run's own final value
  instead (a run that is still falling fast reaches "its own" final value late, a converged one early).
- `converged_s`: wall time from the start (data preparation included) until the default recipe's ensemble is
  converged in that sense.

Usage: python benchmarks/ensemble_speed.py [--replicas 100 --epochs 1000 --threads 2] [--quick]
"""
import argparse, json, os, platform, sys, time, warnings

import numpy as np
import torch
import torch.nn as nn


def prepare(size, n_clusters, n_replicas, seed):
    "Synthetic SI -> thickness clusters -> dE1/dE2 per cluster -> training set."
    from eelsnb.synthetic import synthetic_si
    from eelsnb.cluster import cluster_thickness
    from eelsnb.preprocess import find_dE1_dE2
    from eelsnb.replicas import training_set_from_clusters
    si = synthetic_si(shape=(size, size), seed=seed)
    cl = cluster_thickness(si.counts, si.energy, n_clusters=n_clusters, seed=seed)
    means = np.stack([si.counts[cl.labels == k].mean(0) for k in range(n_clusters)])
    win = find_dE1_dE2(means, si.energy)
    ts = training_set_from_clusters(si.counts, si.energy, cl.labels, win.dE1, win.dE2, n_replicas=n_replicas, seed=seed)
    return ts


def batched(ts, epochs, activation, seed):
    "eelsnb's Lightning path; returns (seconds of fit, per-epoch curve of the median best validation chi2, ensemble)."
    from eelsnb.ensemble import ZLPEnsemble
    ens = ZLPEnsemble(max_epochs=epochs, activation=activation, seed=seed, progress_bar=False, log_every=10,
                      accelerator="cpu").fit(ts)
    steps = np.array([h["step"] for h in ens.history]); vals = np.array([h["chi2_best_median"] for h in ens.history])
    secs = np.array([h["seconds"] for h in ens.history])
    return ens.fit_seconds, steps, vals, secs, ens


def reference_net(n_in, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 10), nn.Sigmoid(), nn.Linear(10, 15), nn.Sigmoid(), nn.Linear(15, 5),
                         nn.Sigmoid(), nn.Linear(5, 1))


def sequential(ts, epochs, replicas, seed, lean=False, mono_weight=100.0, lr=1e-3):
    "One network per replica, one after another; returns (seconds, (n_rep, epochs) validation chi2 per epoch)."
    from eelsnb.ensemble import InputScaler
    R, P, I = ts.inputs.shape
    G, M = ts.mono_inputs.shape[1:3]
    used = ts.train | ts.valid
    allx = np.concatenate([ts.inputs[used], ts.pseudo_inputs.reshape(-1, I), ts.mono_inputs.reshape(-1, I)])
    scaler = InputScaler.fit(allx, ts.input_names, out_range=(0.1, 0.9), min_width=1e-9) # EELSfitter: [0.1, 0.9]
    T = lambda a: torch.as_tensor(np.asarray(a, np.float64), dtype=torch.float32)
    chi2 = np.full((len(replicas), epochs), np.nan)
    t0 = time.perf_counter()
    for j, k in enumerate(replicas):
        tr, va = ts.train[k], ts.valid[k]
        X = T(scaler(np.concatenate([ts.inputs[k][tr], ts.pseudo_inputs[k]])))
        y = T(np.r_[ts.target[k][tr], ts.pseudo_target[k]]); s = T(np.r_[ts.sigma[k][tr], ts.pseudo_sigma[k]])
        Xv, yv, sv = T(scaler(ts.inputs[k][va])), T(ts.target[k][va]), T(ts.sigma[k][va])
        Xm = [T(scaler(ts.mono_inputs[k, g])) for g in range(G)]
        net = reference_net(I, seed + k)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        if lean:
            Xall = torch.cat([X, Xv] + Xm); n1, n2 = len(X), len(X) + len(Xv)
        for ep in range(epochs):
            if lean: # one forward on all points; validation chi2 from the same pass
                f = net(Xall).squeeze(-1)
                fm = f[n2:].reshape(G, M)
                loss = (((f[:n1] - y) / s) ** 2).mean() + mono_weight * torch.relu(fm[:, 1:] - fm[:, :-1]).square().mean()
                chi2[j, ep] = (((f[n1:n2].detach() - yv) / sv) ** 2).mean().item()
                opt.zero_grad(); loss.backward(); opt.step()
                continue
            net.train() # the reference loop: training pass, monotonicity group by group, step, evaluation pass
            f = net(X).squeeze(-1)
            mono = sum(torch.relu(torch.diff(net(xm).squeeze(-1))).square().mean() for xm in Xm) / G
            loss = (((f - y) / s) ** 2).mean() + mono_weight * mono
            opt.zero_grad(); loss.backward(); opt.step()
            net.eval()
            with torch.no_grad():
                fv = net(Xv).squeeze(-1)
                _ = sum(torch.relu(torch.diff(net(xm).squeeze(-1))).square().mean() for xm in Xm) / G
                chi2[j, ep] = (((fv - yv) / sv) ** 2).mean().item()
    return time.perf_counter() - t0, chi2


def first_epoch(steps, curve, target):
    "First epoch at which `curve` <= target (None if never)."
    ok = np.flatnonzero(np.asarray(curve) <= target)
    return None if ok.size == 0 else int(steps[ok[0]])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same for both methods")
    ap.add_argument("--size", type=int, default=40, help="SI is size x size pixels")
    ap.add_argument("--clusters", type=int, default=5)
    ap.add_argument("--lean-replicas", type=int, default=10, help="replicas timed for the lean sequential estimate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 replicas, 150 epochs, 20x20 SI")
    a = ap.parse_args(argv)
    if a.quick: a.replicas, a.epochs, a.size, a.lean_replicas = 8, 150, 20, 2
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t_start = time.perf_counter()
    ts = prepare(a.size, a.clusters, a.replicas, a.seed)
    prep_s = time.perf_counter() - t_start

    out = dict(n_replicas=a.replicas, epochs=a.epochs, threads=a.threads)
    lean_n = max(1, min(a.lean_replicas, a.replicas))
    tl, _ = sequential(ts, a.epochs, range(lean_n), a.seed, lean=True)
    tb, sb, cb, secb, ens = batched(ts, a.epochs, "sigmoid", a.seed)
    tt, st, ct, sect, ens_t = batched(ts, a.epochs, "tanh", a.seed)
    ts_, chi_seq = sequential(ts, a.epochs, range(a.replicas), a.seed)
    seq_curve = np.median(np.minimum.accumulate(chi_seq, axis=1), axis=0) # best-so-far per replica, median
    seq_steps = np.arange(a.epochs)

    finals = dict(tanh=ct[-1], sigmoid=cb[-1], sequential=seq_curve[-1])
    ref = min(finals.values())
    conv = first_epoch(st, ct, 1.1 * ref)
    setup_t = tt - sect[-1] # Lightning set-up and tear-down around the training loop
    out.update(batched_s=round(tb, 2), sequential_s=round(ts_, 2), speedup=round(ts_ / tb, 1),
               batched_tanh_s=round(tt, 2),
               sequential_lean_s_est=round(tl * a.replicas / lean_n, 2),
               speedup_vs_lean=round(tl * a.replicas / lean_n / tb, 1),
               converged_chi2=round(float(ref), 3),
               batched_epochs_to_converge=conv,
               batched_sigmoid_epochs_to_converge=first_epoch(sb, cb, 1.1 * ref),
               sequential_epochs_to_converge=first_epoch(seq_steps, seq_curve, 1.1 * ref),
               epochs_to_10pct_of_own_final=dict(batched=first_epoch(st, ct, 1.1 * ct[-1]),
                                                 batched_sigmoid=first_epoch(sb, cb, 1.1 * cb[-1]),
                                                 sequential=first_epoch(seq_steps, seq_curve, 1.1 * seq_curve[-1])),
               converged_s=None if conv is None else round(prep_s + setup_t + float(sect[list(st).index(conv)]), 2),
               median_valid_chi2=round(float(ct[-1]), 3), median_valid_chi2_sigmoid=round(float(cb[-1]), 3),
               median_valid_chi2_sequential=round(float(seq_curve[-1]), 3),
               outliers=int(ens_t.outliers.sum()), outliers_sigmoid=int(ens.outliers.sum()),
               prep_s=round(prep_s, 2), n_points=int(ts.inputs.shape[1] + ts.pseudo_inputs.shape[1]
                                                      + np.prod(ts.mono_inputs.shape[1:3])),
               torch=torch.__version__, cpu=platform.processor() or platform.machine(),
               load_avg_at_start=None if load0 is None else round(load0, 2),
               load_avg_at_end=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
