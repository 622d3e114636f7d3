"""Locust users for `bench/load_serve.py`: closed-loop clients of `latent serve` sending vector queries to the
native API and to clip-retrieval's. The query vectors come from $LATENT_LOAD_QUERIES (a JSON list of lists,
written by load_serve.py: Locust's environment needs nothing but Locust)."""

import json
import os
import random

from locust import HttpUser, task

with open(os.environ["LATENT_LOAD_QUERIES"]) as f:
    QUERIES = json.load(f)
ALLOWED = {200, 503}  # anything else is a failure (503 must carry Retry-After)


class SearchUser(HttpUser):
    @task(3)
    def search(self) -> None:
        self._post("/search", {"vector": random.choice(QUERIES), "k": 10})

    @task(1)
    def knn_service(self) -> None:
        self._post("/knn-service", {"embedding_input": random.choice(QUERIES), "num_images": 10})

    def _post(self, path: str, body: dict) -> None:
        with self.client.post(path, json=body, catch_response=True, name=path) as response:
            if response.status_code not in ALLOWED:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif response.status_code == 503 and "Retry-After" not in response.headers:
                response.failure("503 without Retry-After")
            else:
                response.success()
