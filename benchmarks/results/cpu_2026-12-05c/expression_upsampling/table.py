import json, numpy as np, sys
arms = {"transposed": ["transposed_s0", "transposed_s1", "transposed_s2"], "bilinear": ["bilinear_s0e", "bilinear_s1", "bilinear_s2"]}
keys = [("expr_target_accuracy", "classifier: target-label accuracy"), ("expr_audit_target_accuracy", "auditor: target-label accuracy"),
        ("expr_audit_relative_accuracy", "auditor: relative to real"), ("expr_audit_target_accuracy_blur", "auditor after blur"),
        ("expr_label_coverage", "label coverage"), ("expr_hf_share_ratio", "high-frequency share ratio"),
        ("expr_hf_peak_ratio", "spectral peak ratio (real baseline 2.8)"), ("expr_identity_cos_translated", "identity cosine, translated (same subject 0.983)"),
        ("expr_identity_rank1_translated", "identity rank-1, translated (real 0.991)"), ("expr_judge_auc", "judge AUC, full"),
        ("expr_fid_clsfeat", "Frechet, classifier features (real 0.141)"), ("expr_swd_laplacian", "SWD x1e3 (real 35.9)")]
data = {}
for arm, runs in arms.items():
    ds = []
    for r in runs:
        try: ds.append(json.load(open(f"/tmp/arms/{r}/metrics/eval_expression.json")))
        except FileNotFoundError: pass
    data[arm] = ds
print("| figure | " + " | ".join(f"{a} ({len(d)} seeds)" for a, d in data.items()) + " |")
print("|---|" + "---|" * len(data))
for k, name in keys:
    row = []
    for a, ds in data.items():
        v = [d[k] for d in ds if isinstance(d.get(k), (int, float))]
        row.append(f"{np.mean(v):.3f} ± {np.std(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})" if v else "-")
    print(f"| {name} | " + " | ".join(row) + " |")
for a, ds in data.items():
    print(a, "textured:", [d.get("expr_hf_labels_textured") for d in ds], "above real (auditor):", [d.get("expr_audit_target_accuracy_labels_above_real") for d in ds], "not covered:", [d.get("expr_labels_not_covered") for d in ds])
