//! Balancer costs: building tables (control plane, on a target-set change) and
//! picking (data plane, per connection).
//!
//!     cargo bench --bench balancer

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringlb::balancer::{HashKey, LeastConnections, Maglev, RoundRobin};

/// `n` targets with weights 1-1000, spread (what issue #12 measured: 10,000
/// of them took 41 s to build as a materialised schedule).
fn targets(n: usize) -> Vec<(SocketAddr, u32)> {
    (0..n)
        .map(|i| {
            (
                SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 6400)),
                1 + (i as u32 * 7919) % 1000,
            )
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    for n in [10, 100, 1000, 10_000] {
        let t = targets(n);
        let weights: Vec<u32> = t.iter().map(|t| t.1).collect();
        g.bench_with_input(BenchmarkId::new("maglev", n), &t, |b, t| {
            b.iter(|| Maglev::new(black_box(t), HashKey::SourceIpPort))
        });
        g.bench_with_input(BenchmarkId::new("round_robin", n), &weights, |b, w| {
            b.iter(|| RoundRobin::new(black_box(w), Arc::default()))
        });
    }
    g.finish();
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for n in [10, 100, 1000, 10_000] {
        let t = targets(n);
        let weights: Vec<u32> = t.iter().map(|t| t.1).collect();
        let active: Vec<u64> = (0..n as u64).map(|i| i % 7).collect();
        let rr = RoundRobin::new(&weights, Arc::default());
        let lc = LeastConnections::new(Arc::default());
        let mg = Maglev::new(&t, HashKey::SourceIpPort);
        let mut port = 0u16;
        g.bench_function(BenchmarkId::new("round_robin", n), |b| {
            b.iter(|| rr.pick_by(|_| true))
        });
        // Nothing usable: the worst case, bounded by the target count.
        g.bench_function(BenchmarkId::new("round_robin_none_usable", n), |b| {
            b.iter(|| rr.pick_by(|_| false))
        });
        g.bench_function(BenchmarkId::new("least_connections", n), |b| {
            b.iter(|| lc.pick_by(n, |i| (active[i], weights[i]), |_| true))
        });
        g.bench_function(BenchmarkId::new("maglev", n), |b| {
            b.iter(|| {
                port = port.wrapping_add(1);
                mg.pick_by(black_box(&SocketAddr::from(([192, 0, 2, 7], port))), |_| {
                    true
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, build, pick);
criterion_main!(benches);
