#!/usr/bin/env bash
# Everything the integration tests need besides Python: registries and peer tools.
source "$(dirname "$0")/lib.sh"
apt_install docker-registry skopeo ca-certificates openssl
"$(dirname "$0")/go-tool.sh" registry github.com/distribution/distribution/v3/cmd/registry v3.1.1
"$(dirname "$0")/go-tool.sh" crane github.com/google/go-containerregistry/cmd/crane v0.22.1
# The third registry implementation: go-containerregistry's pkg/registry, referrers API on.
"$(dirname "$0")/go-local-tool.sh" ggcr-registry testkit/ggcr-registry
"$(dirname "$0")/go-tool.sh" oras oras.land/oras/cmd/oras v1.3.6
"$(dirname "$0")/go-tool.sh" toxiproxy-server github.com/Shopify/toxiproxy/v2/cmd/server v2.5.0
"$(dirname "$0")/install-helm.sh"
# Signers for the signed-promotion tests: cosign v2 writes legacy .sig/.att/.sbom tags,
# cosign v3 sigstore bundles as OCI referrers.
"$(dirname "$0")/go-tool.sh" cosign2 github.com/sigstore/cosign/v2/cmd/cosign v2.6.5
"$(dirname "$0")/go-tool.sh" cosign3 github.com/sigstore/cosign/v3/cmd/cosign v3.1.3
