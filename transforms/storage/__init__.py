"""Storage, below the stages: URI rules (uris), bounded reads of local and Beam files (local,
bounded), gs:// objects and the job's Cloud Storage credentials (gcs). No Beam transforms."""
