"""Scale-out: the repository in object storage (``storage``), Kubernetes manifests (``k8s``) and a
capacity plan from measured reports (``capacity``)."""
