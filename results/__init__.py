"""Tidy result tables, comparison, statistics, reports and the CI gate."""
