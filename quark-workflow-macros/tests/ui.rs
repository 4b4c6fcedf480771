//! Every diagnostic of the macros, and the shapes they accept, as trybuild fixtures.
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p quark-workflow-macros --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
