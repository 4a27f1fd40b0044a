"""Value types shared by every component: digests, names, manifests, chunking, signing."""
