"""Tests of aigov.py against a running gateway (the dev stack).

Run by services/devstack/internal/e2e (TestGatewayPythonClient) with the
system python3; by hand, after `make run`:

    AIGOV_GATEWAY_URL=http://127.0.0.1:8090 AIGOV_TOKENS=.run/tokens python3 -m unittest -v test_aigov
"""

import os
import unittest
import uuid

import aigov

URL = os.environ.get("AIGOV_GATEWAY_URL", "")
TOKENS = os.environ.get("AIGOV_TOKENS", "")


def token_file(persona):
    return os.path.join(TOKENS, persona + ".jwt")


@unittest.skipUnless(URL and TOKENS, "AIGOV_GATEWAY_URL and AIGOV_TOKENS name a running gateway and its token files")
class GatewayTest(unittest.TestCase):
    fraud = aigov.Resource("Model", "fraud-detector")

    def client(self, persona="alice", **kw):
        return aigov.Client(URL, token_file=token_file(persona), **kw)

    def test_allow(self):
        d = self.client().authorize("model.retrain", self.fraud, context={"environment": "staging"})
        self.assertTrue(d.allowed, d)
        self.assertEqual(d.code, "")
        self.assertIn("data-scientists-retrain-staging", d.policy_ids)
        self.assertTrue(d.policy_version.startswith("sha256:"))
        self.assertEqual(d.principal["subject"], "alice")

    def test_deny_is_a_decision(self):
        d = self.client().authorize("dataset.update", aigov.Resource("Dataset", "transactions-training"))
        self.assertFalse(d.allowed)
        self.assertEqual(d.code, "policy_denied")
        self.assertTrue(d.reason)
        self.assertTrue(d.request_id)

    def test_bad_token_is_a_deny(self):
        d = aigov.Client(URL, token="not-a-jwt").authorize("model.retrain", self.fraud)
        self.assertFalse(d.allowed)
        self.assertEqual(d.code, "malformed_token")

    def test_token_callable(self):
        with open(token_file("alice")) as f:
            tok = f.read()
        d = aigov.Client(URL, token=lambda: tok).authorize("model.retrain", self.fraud, context={"environment": "staging"})
        self.assertTrue(d.allowed)

    def test_no_token(self):
        with self.assertRaises(aigov.Unauthorized) as cm:
            aigov.Client(URL).authorize("model.retrain", self.fraud)
        self.assertEqual(cm.exception.status, 401)
        self.assertEqual(cm.exception.code, "missing_bearer")

    def test_bad_request_has_its_code(self):
        with self.assertRaises(aigov.BadRequest) as cm:
            self.client().authorize("Retrain!", self.fraud)
        self.assertEqual(cm.exception.code, "invalid_action")
        with self.assertRaises(aigov.BadRequest) as cm:
            self.client().authorize("model.retrain", aigov.Resource("model", "x"))
        self.assertEqual(cm.exception.code, "invalid_resource")

    def test_same_id_is_the_same_request(self):
        rid = "py-" + str(uuid.uuid4())
        c = self.client()
        a = c.authorize("model.retrain", self.fraud, context={"environment": "staging"}, request_id=rid)
        b = c.authorize("model.retrain", self.fraud, context={"environment": "staging"}, request_id=rid)
        self.assertEqual((a.request_id, a.decision), (rid, "allow"))
        self.assertEqual((b.request_id, b.decision), (rid, "allow"))
        with self.assertRaises(aigov.Conflict) as cm:
            c.authorize("model.retrain", aigov.Resource("Model", "churn-predictor"), request_id=rid)
        self.assertEqual(cm.exception.code, "id_conflict")


class OfflineTest(unittest.TestCase):
    def test_unreachable_gateway_is_not_an_allow(self):
        c = aigov.Client("http://127.0.0.1:9", token="t", retries=1, backoff=0.01, timeout=2)
        with self.assertRaises(aigov.Unavailable) as cm:
            c.authorize("model.retrain", aigov.Resource("Model", "m"))
        self.assertEqual(cm.exception.code, "gateway_unreachable")

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            aigov.Client("127.0.0.1:8090")
        with self.assertRaises(ValueError):
            aigov.Client("http://x", token="a", token_file="b")


if __name__ == "__main__":
    unittest.main()
