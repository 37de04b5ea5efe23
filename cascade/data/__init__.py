"""Data: the ShapeWorld procedural world (scenes, captions, renders, judge) and datasets."""
from .shapeworld import (BACKGROUNDS, COLOURS, HELD_OUT, POSITIONS, RELATIONS, SHAPES, SIZES, Obj,
                         Scene, caption, held_out_scenes, paraphrases, parse_caption, render,
                         render_array, render_batch, sample_scene, sample_scenes, scene_at)
from .judge import Reading, ReadObject, accuracy, judge, judge_and_score, score
from .folder import ImageCaptionFolder
from .pool import ScenePool, ShapeWorldDataset, collate_shapeworld

__all__ = [
    "BACKGROUNDS", "COLOURS", "HELD_OUT", "POSITIONS", "RELATIONS", "SHAPES", "SIZES", "Obj",
    "Scene", "caption", "held_out_scenes", "paraphrases", "parse_caption", "render",
    "render_array", "render_batch", "sample_scene", "sample_scenes", "scene_at", "Reading",
    "ReadObject", "accuracy", "judge", "judge_and_score", "score", "ImageCaptionFolder",
    "ScenePool", "ShapeWorldDataset", "collate_shapeworld",
]
