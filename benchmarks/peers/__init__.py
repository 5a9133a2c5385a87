"""The same labelling job written with other engines, as their users would write it, for
`python -m benchmarks.peers` (__main__.py): Ray Data (ray_data_job.py) and Daft
(daft_job.py). They run in a virtualenv of their own (requirements-peers.txt beside
requirements.txt), not the project's."""
