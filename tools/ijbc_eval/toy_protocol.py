"""A tiny random IJB-layout protocol (images, landmarks, templates, pairs, 1:N CSVs) for tests
and smoke runs of the evaluation; tools/synthetic/ builds the realistic mini IJB-C.

Subjects 0..S-1 each have `templates_per_subject` templates; the first template of the first
half of the subjects forms gallery 1, of the second half gallery 2; all other templates are
probes (so every probe is mated in exactly one gallery, as in IJB-C). 1:1 pairs are every
gallery template against every probe template.
"""
from __future__ import annotations


import cv2
import numpy as np

from tools.ijbc_eval.alignment import REFERENCE_POINTS
from tools.ijbc_eval.protocol import SUBSETS, subset_paths


def write_toy_protocol(data_path, subset: str = "IJBC", num_subjects: int = 6,
                       templates_per_subject: int = 3, images_per_template: int = 2,
                       image_size: int = 64, seed: int = 0) -> dict:
    """Write the protocol under data_path/subset; returns the ground truth as arrays."""
    rng = np.random.default_rng(seed)
    paths = subset_paths(data_path, subset)
    paths["images"].mkdir(parents=True, exist_ok=True)
    paths["landmarks"].parent.mkdir(parents=True, exist_ok=True)
    num_templates = num_subjects * templates_per_subject
    template_ids = 1000 + 7 * np.arange(num_templates)               # not contiguous on purpose
    template_subjects = np.repeat(np.arange(num_subjects), templates_per_subject) + 50
    image_templates = np.repeat(template_ids, images_per_template)
    # the first two images of a template share a media (video frames), the rest are stills
    image_medias = (np.repeat(np.arange(num_templates), images_per_template) * 10
                    + np.minimum(np.tile(np.arange(images_per_template), num_templates), 1))
    num_images = len(image_templates)
    names = np.array([f"{index + 1}.jpg" for index in range(num_images)])
    scale = image_size / 112.0
    landmarks = (REFERENCE_POINTS[None] * scale * rng.uniform(0.8, 1.0, (num_images, 1, 1))
                 + rng.normal(0, 1.0, (num_images, 5, 2)))
    faceness = rng.uniform(0.5, 1.0, num_images)
    for name in names:
        cv2.imwrite(str(paths["images"] / name),
                    rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
    with open(paths["landmarks"], "w") as handle:
        for name, points, score in zip(names, landmarks.reshape(num_images, 10), faceness):
            handle.write(f"{name} {' '.join(f'{v:.3f}' for v in points)} {score:.3f}\n")
    with open(paths["templates"], "w") as handle:
        handle.writelines(f"{name} {t} {m}\n" for name, t, m in zip(names, image_templates, image_medias))

    first_of_subject = np.arange(num_subjects) * templates_per_subject
    is_gallery = np.zeros(num_templates, dtype=bool)
    is_gallery[first_of_subject] = True
    gallery_sets = {SUBSETS[subset][1][0]: first_of_subject[: num_subjects // 2],
                    SUBSETS[subset][1][1]: first_of_subject[num_subjects // 2:]}
    probes = np.flatnonzero(~is_gallery)
    first, second = np.meshgrid(np.flatnonzero(is_gallery), probes, indexing="ij")
    first, second = first.reshape(-1), second.reshape(-1)
    labels = (template_subjects[first] == template_subjects[second]).astype(int)
    with open(paths["pairs"], "w") as handle:
        handle.writelines(f"{template_ids[a]} {template_ids[b]} {y}\n"
                          for a, b, y in zip(first, second, labels))
    for key, rows in [*gallery_sets.items(), ("probes", probes)]:
        with open(paths[key], "w") as handle:
            handle.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
            for row in rows:
                for name in names[image_templates == template_ids[row]]:
                    handle.write(f"{template_ids[row]},{template_subjects[row]},{name}\n")
    return {"template_ids": template_ids, "template_subjects": template_subjects,
            "image_templates": image_templates, "image_medias": image_medias, "names": names,
            "faceness": faceness, "pair_first": template_ids[first],
            "pair_second": template_ids[second], "pair_labels": labels,
            "galleries": {k: template_ids[v] for k, v in gallery_sets.items()},
            "probes": template_ids[probes]}
