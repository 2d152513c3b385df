"""Rollout stage: engines that generate responses with DLC (pi_cal) sampling."""
