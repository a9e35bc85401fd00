"""Everything-mode mask generators: image -> Candidates. One file per generator, each registers itself."""
