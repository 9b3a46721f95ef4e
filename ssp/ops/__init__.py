"""Operations: params, tracking, registry, fingerprints, launching."""
