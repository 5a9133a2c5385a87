#!/usr/bin/env bash
# Submits the labelling job to Google Cloud Dataflow, on GPU workers by default.
# ./run_dataflow.sh --help
set -euo pipefail
repo=$(cd "$(dirname "$0")" && pwd) # no cd: relative paths are the caller's (README "Usage")

usage() {
  cat <<'USAGE'
Usage: ./run_dataflow.sh --project P --bucket B --image IMAGE --input PATTERN --output ROOT
                         [--region R] [--gpu_type T] [--gpu_count N] [--machine_type M]
                         [--disk_size_gb G] [--cpu] [any pipeline.run or Beam flag ...]

Each setting can also come from the environment (PROJECT, REGION, BUCKET, IMAGE, INPUT,
OUTPUT, GPU_TYPE, GPU_COUNT, MACHINE_TYPE, DISK_SIZE_GB); flags win.

  --project        Google Cloud project of the job
  --region         Dataflow region (default us-central1; pick one that has the GPU type)
  --bucket         bucket for staging and temporary files (gs://BUCKET/dataflow/...)
  --image          worker container built from ./Dockerfile, pushed to Artifact Registry
  --input/--output as for python -m pipeline.run (gs:// paths)
  --gpu_type       accelerator (default nvidia-l4, on g2-standard-16 machines)
  --gpu_count      GPUs per worker (default 1)
  --machine_type   worker machine type (default with GPUs: g2-standard-16 for an L4,
                   n1-standard-16 for a T4, a2-highgpu-1g for an A100; n1-standard-4 with --cpu)
  --disk_size_gb   worker boot disk, room for the image (default 50)
  --cpu            no GPU: CPU workers, no --require_gpu, one SDK process per core

GPU runs use Runner v2 with the image as --sdk_container_image, the NVIDIA driver installed
by Dataflow, one SDK process per worker (one model copy per GPU) and --require_gpu (which
also makes the default batch 64). Decoding, not the GPU, limits a worker (README
"Performance"), hence 16 vCPUs per GPU, 4 harness threads (the reads and decodes run on the
process's own pools; a few bundles keep a batch ready for the GPU) and 128 reads in flight
with 1 GB for their bytes (at 50 ms per request, 128 reads sustain about 2,500 images/s). Every other flag (--model, --date, --max_num_workers,
--template_location, ...) is passed to python -m pipeline.run after these defaults, so it
overrides them.
USAGE
}

project=${PROJECT:-} region=${REGION:-us-central1} bucket=${BUCKET:-} image=${IMAGE:-}
input=${INPUT:-} output=${OUTPUT:-} gpu_type=${GPU_TYPE:-nvidia-l4} gpu_count=${GPU_COUNT:-1}
machine_type=${MACHINE_TYPE:-} disk_size_gb=${DISK_SIZE_GB:-50} cpu=false
passthrough=()
source "$repo/scripts/flags.sh"
while [ $# -gt 0 ]; do
  next_flag "$@"
  case "$flag" in
    -h|--help) usage; exit 0 ;;
    --cpu) cpu=true ;;
    --project) take "$@"; project=$value ;;
    --region) take "$@"; region=$value ;;
    --bucket) take "$@"; bucket=${value#gs://} ;;
    --image) take "$@"; image=$value ;;
    --input) take "$@"; input=$value ;;
    --output) take "$@"; output=$value ;;
    --gpu_type) take "$@"; gpu_type=$value ;;
    --gpu_count) take "$@"; gpu_count=$value ;;
    --machine_type) take "$@"; machine_type=$value ;;
    --disk_size_gb) take "$@"; disk_size_gb=$value ;;
    *) passthrough+=("$1") ;;
  esac
  shift "$shift_by"
done
for required in project bucket image input output; do
  if [ -z "${!required}" ]; then
    echo "run_dataflow.sh: error: --$required is required (or ${required^^} in the environment); see --help" >&2
    exit 2
  fi
done

# The machine that carries one GPU of each type with the most vCPUs for its price: decoding
# (about 200 photos/s per vCPU, far less for camera-size ones) is what keeps a GPU busy.
gpu_machine() {
  case "$1" in
    nvidia-l4) echo g2-standard-16 ;;
    nvidia-tesla-a100) echo a2-highgpu-1g ;;
    *) echo n1-standard-16 ;;
  esac
}

args=(
  --runner=DataflowRunner --project="$project" --region="$region"
  --temp_location="gs://$bucket/dataflow/tmp" --staging_location="gs://$bucket/dataflow/staging"
  --sdk_container_image="$image" --sdk_location=container --experiments=use_runner_v2
  --setup_file="$repo/setup.py" --disk_size_gb="$disk_size_gb"
  --input="$input" --output="$output"
  # Production labels with B3, never the laptop fallback: a --model given later wins
  # (best a gs:// copy of the module, README "Run on Dataflow").
  --model=https://tfhub.dev/tensorflow/efficientnet/b3/classification/1
)
if $cpu; then
  args+=(--machine_type="${machine_type:-n1-standard-4}")
else
  args+=(
    --machine_type="${machine_type:-$(gpu_machine "$gpu_type")}"
    --dataflow_service_options="worker_accelerator=type:$gpu_type;count:$gpu_count;install-nvidia-driver"
    --experiments=no_use_multiple_sdk_containers --require_gpu
    --number_of_worker_harness_threads=4 --read_concurrency=128 --max_inflight_mb=1024
  )
fi

"$repo/scripts/setup_venv.sh"
# Workers run the image's Python; Beam needs the launching Python to be the same version.
want=$(cat "$repo/.python-version") have=$("$repo/.venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != "$want" ]; then
  echo "run_dataflow.sh: error: .venv has Python $have but the worker image has $want (.python-version)" >&2
  exit 2
fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} # this checkout's code, from any folder
exec "$repo/.venv/bin/python" -m pipeline.run "${args[@]}" "${passthrough[@]}"
