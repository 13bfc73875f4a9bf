"""Why the model decides as it does: CAMs, feature maps, attention rollout, overlays, scores against boxes.

    from medclf.explain.registry import compute_maps, list_methods
    maps = compute_maps(model, x, "gradcam", class_index=contract.positive_index)   # B x H x W in [0, 1]

    from medclf.explain.run import explain_files          # medclf explain RUN INPUT... --method M
    from medclf.explain.scoring import score_run          # medclf explain RUN --data CACHE --score

Modules: registry (names -> methods, ensembles), cams (grad-cam), featuremaps, rollout, hooks, overlay,
scores (pointing game, energy in box, ROAD), scoring, gallery. docs/explain.md has the decisions.
Nothing heavy is imported here, so `import medclf.explain` is cheap.
"""
