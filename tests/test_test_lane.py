"""scripts/test_lane.py: the second test run of `make test` gets state of its own; neither run flushes the other."""

from __future__ import annotations

from scripts.test_lane import lane_environment

CI = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/visnet",
    "CACHE_URL": "redis://127.0.0.1:6379/13",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/14",
    "TEST_REDIS_URL": "redis://127.0.0.1:6379/15",
}


def test_every_shared_service_moves_to_state_of_its_own():
    lane = lane_environment("standalone", CI)
    assert lane == {
        "TEST_VAR_DIR": "var/test-standalone",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/visnet_standalone",
        "CACHE_URL": "redis://127.0.0.1:6379/5",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/6",
        "TEST_REDIS_URL": "redis://127.0.0.1:6379/7",
    }
    redis = [url for env in (CI, lane) for url in env.values() if url.startswith("redis")]
    assert len(set(redis)) == 6  # the two runs' three Redis databases, all different


def test_embedded_defaults_need_only_a_folder_of_their_own():
    assert lane_environment("standalone", {}) == {"TEST_VAR_DIR": "var/test-standalone"}
    assert lane_environment("standalone", {"CELERY_BROKER_URL": "filesystem://", "CACHE_URL": ""}) == {
        "TEST_VAR_DIR": "var/test-standalone"
    }


def test_an_sqlite_file_and_a_redis_url_without_a_database_number_move_too():
    lane = lane_environment(
        "b", {"DATABASE_URL": "sqlite:////srv/db.sqlite3", "CACHE_URL": "redis://cache:6379", "TEST_REDIS_URL": "x"}
    )
    assert lane["DATABASE_URL"] == "sqlite:////srv/db_b.sqlite3"
    assert lane["CACHE_URL"] == "redis://cache:6379/8"
    assert "TEST_REDIS_URL" not in lane
