//! Placement is a compatibility contract: every member of a cluster, whatever its version
//! or platform, must map a user to the same owners. This checks 1,000 keys against the
//! table checked in at `tests/golden/placement.txt` (five nodes, one of weight 2, the
//! default 160 vnodes, R = 2). If it fails, placement changed: a rolling upgrade would
//! split the cluster's view of who owns what. Regenerate only for a deliberate,
//! documented, cluster-wide break: `HOLDFAST_BLESS=1 cargo test -p holdfast-status --test placement_golden`.

use holdfast_status::placement::{DEFAULT_VNODES, Member, NodeId, Placement};

fn placement() -> Placement {
    let members: Vec<Member> = (1..=5)
        .map(|i| Member {
            id: NodeId(i),
            addr: format!("10.0.0.{i}:7300"),
            weight: if i == 3 { 2 } else { 1 },
        })
        .collect();
    Placement::new(&members, DEFAULT_VNODES, 2)
}

fn table() -> String {
    let p = placement();
    let mut out = String::new();
    for i in 0..1000 {
        let user = format!("user-{i}");
        let owners: Vec<String> = p.owners(&user).iter().map(|n| n.0.to_string()).collect();
        out.push_str(&format!("{user} {}\n", owners.join(",")));
    }
    out
}

#[test]
fn placement_matches_the_golden_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/placement.txt");
    let got = table();
    if std::env::var_os("HOLDFAST_BLESS").is_some() {
        std::fs::write(path, &got).expect("write golden table");
    }
    let want = std::fs::read_to_string(path).expect("golden table is checked in");
    let mismatches: Vec<(&str, &str)> =
        want.lines().zip(got.lines()).filter(|(w, g)| w != g).take(5).collect();
    assert_eq!(want.lines().count(), 1000, "golden table has 1,000 keys");
    assert!(mismatches.is_empty(), "placement changed (want, got): {mismatches:?}");
}

#[test]
fn golden_placement_is_balanced_and_weighted() {
    let p = placement();
    let mut primary = [0u32; 6];
    for i in 0..1000 {
        primary[usize::from(p.owners(&format!("user-{i}"))[0].0)] += 1;
    }
    // node 3 has weight 2 of 6: about a third of the keys
    assert!((250..420).contains(&primary[3]), "{primary:?}");
}
