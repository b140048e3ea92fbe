"""crossrank.ray: crossrank on a Ray cluster (folder ``runtime/ray/``; ``pip install "crossrank[ray]"``).

* :mod:`crossrank.ray.serve` - ``serve run crossrank.ray.serve:app model=./minilm num_replicas=4``:
  the ``crossrank serve`` HTTP app (the same :func:`crossrank.serve.app.create_app` object, routes
  and schemas) as a Ray Serve deployment, one :class:`~crossrank.Reranker` and one
  :class:`~crossrank.scheduler.Scheduler` per replica.
* :mod:`crossrank.ray.rescore` - ``python -m crossrank.ray.rescore pairs/*.jsonl --model ./minilm
  --out scored/ --actors 8``: offline rescoring of (query, document) pair files with a Ray Data
  actor pool; resumable, one output file per input shard.
* ``runtime/ray/deploy/rayservice.yaml`` - a KubeRay ``RayService`` manifest for the deployment.

Nothing here imports Ray until a submodule is imported, so ``import crossrank`` stays lean.
"""

__all__: list[str] = []
