"""Recorded signals as live streams: record resolution, paced replay, device simulators."""
