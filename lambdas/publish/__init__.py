"""PublishShard: one shard of the serve variant -> its rows under the run's version, and its report."""
