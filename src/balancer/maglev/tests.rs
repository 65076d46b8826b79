use super::*;

fn targets(n: u16) -> Vec<(SocketAddr, u32)> {
    (0..n)
        .map(|i| (SocketAddr::from(([10, 0, 0, 1 + i as u8], 6400)), 1))
        .collect()
}

fn addrs(t: &[(SocketAddr, u32)]) -> Vec<SocketAddr> {
    t.iter().map(|t| t.0).collect()
}

/// 100,000 distinct client addresses.
fn clients() -> impl Iterator<Item = SocketAddr> {
    (0..100_000u32).map(|i| {
        SocketAddr::from((
            [172, 16 + (i >> 16) as u8, (i >> 8) as u8, i as u8],
            40_000 + (i % 7) as u16,
        ))
    })
}

fn share_moved(before: &[(SocketAddr, u32)], after: &[(SocketAddr, u32)]) -> f64 {
    let (a, b) = (
        Maglev::new(before, HashKey::SourceIpPort),
        Maglev::new(after, HashKey::SourceIpPort),
    );
    let (aa, ba) = (addrs(before), addrs(after));
    let moved = clients()
        .filter(|c| aa[a.pick_by(c, |_| true).unwrap()] != ba[b.pick_by(c, |_| true).unwrap()])
        .count();
    moved as f64 / 100_000.0
}

#[test]
fn maglev_each_of_10_equal_targets_owns_a_tenth_of_the_slots_within_1_percent() {
    let m = Maglev::new(&targets(10), HashKey::SourceIpPort);
    for (i, &c) in m.slot_counts(10).iter().enumerate() {
        let share = c as f64 / TABLE_SIZE as f64;
        assert!((share - 0.1).abs() <= 0.01, "target {i} owns {share:.4}");
    }
}

#[test]
fn maglev_removing_one_of_ten_moves_at_most_11_percent_of_keys() {
    let ten = targets(10);
    let mut nine = ten.clone();
    nine.remove(4);
    let moved = share_moved(&ten, &nine);
    assert!(moved <= 0.11, "moved {moved:.4}");
    assert!(
        moved >= 0.09,
        "the removed target's tenth must move: {moved:.4}"
    );
}

#[test]
fn maglev_adding_an_eleventh_moves_at_most_11_percent_of_keys() {
    let ten = targets(10);
    let eleven = targets(11);
    let moved = share_moved(&ten, &eleven);
    assert!(moved <= 0.11, "moved {moved:.4}");
}

#[test]
fn maglev_weights_1_2_give_a_third_and_two_thirds_within_1_percent() {
    let t = vec![
        (SocketAddr::from(([10, 0, 0, 1], 80)), 1),
        (SocketAddr::from(([10, 0, 0, 2], 80)), 2),
    ];
    let counts = Maglev::new(&t, HashKey::SourceIp).slot_counts(2);
    let (a, b) = (
        counts[0] as f64 / TABLE_SIZE as f64,
        counts[1] as f64 / TABLE_SIZE as f64,
    );
    assert!(
        (a - 1.0 / 3.0).abs() <= 0.01 && (b - 2.0 / 3.0).abs() <= 0.01,
        "{a:.4} {b:.4}"
    );
}

#[test]
fn maglev_file_order_does_not_matter() {
    let t = targets(7);
    let mut rev = t.clone();
    rev.reverse();
    let (a, b) = (
        Maglev::new(&t, HashKey::SourceIpPort),
        Maglev::new(&rev, HashKey::SourceIpPort),
    );
    for c in clients().take(10_000) {
        assert_eq!(
            t[a.pick_by(&c, |_| true).unwrap()].0,
            rev[b.pick_by(&c, |_| true).unwrap()].0
        );
    }
}

#[test]
fn maglev_an_unusable_target_moves_only_its_own_clients() {
    let t = targets(5);
    let m = Maglev::new(&t, HashKey::SourceIpPort);
    for c in clients().take(20_000) {
        let normal = m.pick_by(&c, |_| true).unwrap();
        let skipping = m.pick_by(&c, |i| i != 2).unwrap();
        if normal != 2 {
            assert_eq!(normal, skipping, "a healthy target's client moved");
        } else {
            assert_ne!(skipping, 2);
        }
    }
    assert_eq!(m.pick_by(&clients().next().unwrap(), |_| false), None);
}

#[test]
fn maglev_source_ip_ignores_the_port_source_ip_port_does_not() {
    let m = Maglev::new(&targets(10), HashKey::SourceIp);
    let first = m.pick_by(&"192.0.2.7:1000".parse().unwrap(), |_| true);
    for port in 1001..1100 {
        assert_eq!(
            m.pick_by(&SocketAddr::from(([192, 0, 2, 7], port)), |_| true),
            first
        );
    }
    let m = Maglev::new(&targets(10), HashKey::SourceIpPort);
    let seen: std::collections::HashSet<_> = (1000..1100)
        .map(|port| m.pick_by(&SocketAddr::from(([192, 0, 2, 7], port)), |_| true))
        .collect();
    assert!(seen.len() >= 5, "ports spread over {} targets", seen.len());
}

#[test]
fn maglev_ipv4_mapped_clients_hash_like_ipv4() {
    let v4: SocketAddr = "192.0.2.7:5000".parse().unwrap();
    let mapped: SocketAddr = "[::ffff:192.0.2.7]:5000".parse().unwrap();
    assert_eq!(
        hash_client(&v4, HashKey::SourceIpPort),
        hash_client(&mapped, HashKey::SourceIpPort)
    );
}

/// Golden values: if this fails, hashing changed, and a fleet upgraded one
/// ringlb at a time would send the same client to different targets.
#[test]
fn maglev_golden_picks_for_a_fixed_targets_list() {
    let t: Vec<(SocketAddr, u32)> = (0..5u16)
        .map(|i| (SocketAddr::from(([127, 0, 0, 1], 6400 + i)), 1))
        .collect();
    let m = Maglev::new(&t, HashKey::SourceIpPort);
    let picks: Vec<u16> = (0..16u8)
        .map(|i| {
            t[m.pick_by(
                &SocketAddr::from(([198, 51, 100, i], 50_000 + u16::from(i))),
                |_| true,
            )
            .unwrap()]
            .0
            .port()
        })
        .collect();
    assert_eq!(picks, GOLDEN);
}

const GOLDEN: [u16; 16] = [
    6402, 6404, 6403, 6401, 6403, 6403, 6401, 6400, 6400, 6400, 6404, 6403, 6402, 6403, 6404, 6401,
];

#[test]
fn maglev_a_target_under_one_slot_of_weight_still_owns_a_slot_and_is_picked_alone() {
    // 1,000 targets of weight 1,000 and one of weight 1: its share is 1/10^6
    // of the table, under one slot.
    let mut t: Vec<(SocketAddr, u32)> = (0..1000u32)
        .map(|i| {
            (
                SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 6400)),
                1000,
            )
        })
        .collect();
    let light = SocketAddr::from(([10, 2, 0, 1], 6400));
    t.push((light, 1));
    let m = Maglev::new(&t, HashKey::SourceIpPort);
    assert!(
        m.slot_counts(t.len())[1000] >= 1,
        "the light target owns a slot"
    );
    for c in clients().take(1000) {
        assert_eq!(m.pick_by(&c, |i| i == 1000), Some(1000), "only usable one");
    }
}

#[test]
fn maglev_pick_with_nothing_usable_is_bounded_by_the_target_count() {
    let t = targets(50);
    let m = Maglev::new(&t, HashKey::SourceIpPort);
    let looks = std::cell::Cell::new(0);
    let c = clients().next().unwrap();
    assert_eq!(
        m.pick_by(&c, |_| {
            looks.set(looks.get() + 1);
            false
        }),
        None
    );
    assert!(looks.get() <= STEPS + 50, "{} looks", looks.get());
    // With most targets unusable, every instance still picks the same one.
    let again = Maglev::new(&t, HashKey::SourceIpPort);
    for c in clients().take(1000) {
        assert_eq!(
            m.pick_by(&c, |i| i % 17 == 3),
            again.pick_by(&c, |i| i % 17 == 3)
        );
    }
}
