//! `jwt_auth` per request, a client reusing its RS256 token: with the cache of verified
//! tokens (the default) and without it (`verified_cache: 0`, a signature check every
//! time).
//!
//! cargo bench --bench jwt

mod support;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use extproc_gateway::prelude::*;
use extproc_gateway::processors::{JwtAuth, JwtSettings};
use extproc_gateway::testing::Driver;

fn chain(cache: usize) -> Chain {
    let mut settings: JwtSettings = serde_saphyr::from_str(&format!(
        "jwks_file: {}",
        support::example("jwt/jwks.json").display()
    ))
    .expect("settings");
    settings.verified_cache = cache;
    Chain::builder()
        .processor(JwtAuth::new(settings).expect("jwt_auth"))
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let auth = format!("Bearer {}", support::token());
    let headers = [
        (":method", "GET"),
        (":path", "/"),
        ("authorization", auth.as_str()),
    ];
    let mut group = c.benchmark_group("jwt_request_headers");
    for (name, cache) in [("verify_every_time", 0usize), ("verified_cache", 4096)] {
        let chain = chain(cache);
        group.bench_function(name, |b| {
            b.iter_batched(
                || Driver::new(chain.clone()),
                |mut d| {
                    rt.block_on(async {
                        let a = d.request_headers(&headers, true).await.expect("answer");
                        assert!(a.immediate.is_none(), "token refused");
                    });
                    d
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
