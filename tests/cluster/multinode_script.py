"""Run by test_multinode.py in its own interpreter: a 3-node Ray cluster on one machine."""

import json
import sys

import ray
from ray.cluster_utils import Cluster

import rllib_kfcpo  # noqa: F401
from rllib_kfcpo import PPOLagConfig

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
worker_nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
try:
    config = (
        PPOLagConfig()
        .environment("rllib_kfcpo/ActionCost-v0")
        .env_runners(num_env_runners=2, rollout_fragment_length=100)
        .training(train_batch_size=200, minibatch_size=100, num_epochs=1)
    )
    algo = config.build_algo()
    nodes = algo.env_runner_group.foreach_env_runner(
        lambda runner: ray.get_runtime_context().get_node_id(), local_env_runner=False
    )
    result = algo.train()
    algo.stop()
    print(json.dumps({
        "runner_nodes": nodes,
        "worker_nodes": [n.node_id for n in worker_nodes],
        "steps": int(result["env_runners"]["num_env_steps_sampled"]),
    }))
finally:
    ray.shutdown()
    cluster.shutdown()
    sys.stdout.flush()
