"""--plan's timing (pipeline/plan.py): what it counts in the projection, how much of the work
it takes through the run's graph and the model, and that it leaves nothing behind."""

import tempfile

import pytest

from pipeline import plan as plan_module
from pipeline.plan import TEMP_PREFIX, Plan, estimate, format_plan, graph_sample_size, job_costs
from tests.runs import config_for
from transforms.done import JoinCounts
from transforms.models.handler import ImageClassifierHandler


def test_the_projection_takes_the_graph_s_time_per_image_when_it_is_the_slowest():
    """Beam's own work for each image (in the graph's time, besides decoding and the model)
    is counted: the work is the graph's time per image, not the slower of the other two."""
    plan = Plan(
        counts=JoinCounts(to_label=1000, to_read=1000),
        decode_wall_s=0.003,
        model_s=0.001,
        graph_s=0.004,
    )
    assert plan.work_s() == pytest.approx(1000 * 0.004)
    plan.graph_s = 0.002  # a graph timed on fewer images than the model: never below it
    assert plan.work_s() == pytest.approx(1000 * 0.003)


def test_the_first_job_s_extra_is_counted_once_and_each_job_s_cost_once_a_job():
    """From a first one-image job, a second, and one on 601 images: the second's time less
    one image's is a job's own cost, the first's extra is paid once, and neither is spread
    over the images."""
    start_s, job_s, per_image = job_costs(first=0.9, one=0.6, whole=2.4, images=601)
    assert per_image == pytest.approx(0.003)
    assert job_s == pytest.approx(0.597)
    assert start_s == pytest.approx(0.3)
    plan = Plan(counts=JoinCounts(to_label=1000, to_read=1000), graph_s=per_image)
    plan.start_s, plan.job_s, plan.jobs = start_s, job_s, 2
    assert plan.projected_s() == pytest.approx(0.3 + 2 * 0.597 + 1000 * 0.003)
    # One image only: its time is the job's, none is told apart for the images.
    assert job_costs(first=0.9, one=0.6, whole=0.6, images=1) == pytest.approx((0.3, 0.6, 0.0))


def test_the_graph_takes_enough_images_for_its_time_and_no_more():
    assert graph_sample_size(10_000, per_image_s=0.002, batch_size=32) == 600  # GRAPH_IMAGES
    assert graph_sample_size(10_000, per_image_s=0.02, batch_size=32) == 100  # 2 s of them
    assert graph_sample_size(10_000, per_image_s=0.17, batch_size=32) == 32  # a batch at least
    assert graph_sample_size(300, per_image_s=0.001, batch_size=32) == 300  # what the run reads
    assert graph_sample_size(10, per_image_s=0.17, batch_size=32) == 10


def test_a_costly_model_is_timed_on_one_batch(image_dir, probe_model, tmp_path, monkeypatch):
    """The model's timed calls stop once they took MODEL_S: one batch of a costly model."""
    calls = []
    run = ImageClassifierHandler.run_inference

    def counted(self, batch, model, inference_args=None):
        calls.append(len(batch))
        return run(self, batch, model, inference_args)

    monkeypatch.setattr(ImageClassifierHandler, "run_inference", counted)
    config = config_for(
        f"--input={image_dir['root']}/*.jpg",
        f"--output={tmp_path / 'out'}",
        f"--model={probe_model}",
        "--image_size=32",
        "--batch_size=4",
    )
    plan_module.time_model(config, [])
    assert calls == [4] * (1 + plan_module.MODEL_BATCHES)  # the tracing call, then all
    calls.clear()
    monkeypatch.setattr(plan_module, "MODEL_S", 0.0)
    plan_module.time_model(config, [])
    assert calls == [4, 4]  # the tracing call, then one


def test_the_graph_is_timed_on_the_sample_and_its_files_go(
    image_dir, probe_model, tmp_path, monkeypatch
):
    """The sample (again, up to the run's reads) goes through the run's graph into a
    temporary folder, which goes; nothing is written to the output."""
    temp, out = tmp_path / "temp", tmp_path / "out"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    config = config_for(
        f"--input={image_dir['root']}/*.jpg",
        f"--output={out}",
        f"--model={probe_model}",
        "--image_size=32",
        "--batch_size=4",
        "--plan_sample=5",
    )
    before = sorted(out.rglob("*"))  # the checks of the options made it, no more
    plan = estimate(config)
    reads = plan.counts.to_read
    assert plan.sampled == 5 < reads == plan.graphed
    assert plan.job_s > 0
    assert f"the run's graph on {reads:,} images (the 5 repeated)" in format_plan(plan, config)
    assert not list(temp.glob(f"{TEMP_PREFIX}*"))
    assert sorted(out.rglob("*")) == before
