"""Layer 4: principals, policies, the policy-enforced query gateway and endpoint-validated diagnosis API."""
