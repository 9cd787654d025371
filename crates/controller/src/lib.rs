//! imdsguard-controller: `imdsguard controller`, which keeps the policies generated for
//! the `MetadataAccessPolicy` objects (`imdsguard_kube::crd`) in every namespace, with
//! leader election on a `coordination.k8s.io` Lease. See `docs/controller.md`.
