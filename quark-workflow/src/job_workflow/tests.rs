//! The declaration checks, the stages and the scheduler's rules, without an engine.

use super::run::Scheduler;
use super::*;

#[derive(Debug, Clone, Copy)]
struct Step;

impl Activity for Step {
    const NAME: &'static str = "step";
    type Input = u32;
    type Output = u32;

    async fn run(_ctx: crate::ActivityContext, n: u32) -> Result<u32, ActivityError> {
        Ok(n)
    }
}

fn job(deps: &[&str]) -> Job {
    Job::new(Step, &1).depends_on(deps.iter().copied())
}

fn diamond() -> JobWorkflowBuilder {
    JobWorkflow::builder()
        .add("a", job(&[]))
        .add("b", job(&["a"]))
        .add("c", job(&["a"]))
        .add("d", job(&["b", "c"]))
}

#[test]
fn a_diamond_builds_into_three_stages() {
    let dag = diamond().build().unwrap();
    assert_eq!(dag.stages(), vec![vec!["a"], vec!["b", "c"], vec!["d"]]);
    assert_eq!(dag.jobs()[3].depends_on, ["b", "c"]);
}

#[test]
fn stages_follow_the_longest_path_not_the_order_of_declaration() {
    let dag = JobWorkflow::builder()
        .add("late", job(&["mid"]))
        .add("mid", job(&["root"]))
        .add("root", job(&[]))
        .add("other", job(&[]))
        .build()
        .unwrap();
    assert_eq!(
        dag.stages(),
        vec![vec!["root", "other"], vec!["mid"], vec!["late"]]
    );
}

#[test]
fn build_refuses_duplicates_unknown_dependencies_cycles_and_empty_graphs() {
    let dup = diamond().add("b", job(&[])).build().unwrap_err();
    assert_eq!(dup, JobWorkflowError::DuplicateName("b".into()));
    assert_eq!(dup.to_string(), "two jobs are named `b`");

    let unknown = diamond().add("e", job(&["d", "zz"])).build().unwrap_err();
    assert_eq!(
        unknown,
        JobWorkflowError::UnknownDependency {
            job: "e".into(),
            dependency: "zz".into()
        }
    );

    let cycle = JobWorkflow::builder()
        .add("root", job(&[]))
        .add("x", job(&["root", "z"]))
        .add("y", job(&["x"]))
        .add("z", job(&["y"]))
        .build()
        .unwrap_err();
    assert_eq!(
        cycle.to_string(),
        "the dependencies form a cycle: x -> z -> y -> x"
    );

    let own = JobWorkflow::builder()
        .add("self", job(&["self"]))
        .build()
        .unwrap_err();
    assert_eq!(
        own,
        JobWorkflowError::Cycle {
            path: vec!["self".into(), "self".into()]
        }
    );

    assert_eq!(
        JobWorkflow::builder().build().unwrap_err(),
        JobWorkflowError::Empty
    );
    assert_eq!(
        JobWorkflow::builder()
            .add("", job(&[]))
            .build()
            .unwrap_err(),
        JobWorkflowError::EmptyName
    );
}

#[test]
fn job_options_override_the_activitys_and_rules_default_to_the_workflows() {
    let dag = JobWorkflow::builder()
        .on_failure(OnFailure::SkipDependents)
        .add(
            "a",
            Job::new(Step, &1)
                .retry(RetryPolicy::default().max_attempts(2))
                .timeout(Duration::from_secs(9))
                .queue("etl"),
        )
        .add("b", job(&["a"]).on_failure(OnFailure::FailWorkflow))
        .build()
        .unwrap();
    let a = &dag.jobs()[0];
    assert_eq!(a.options.retry.max_attempts, 2);
    assert_eq!(a.options.start_to_close, Some(Duration::from_secs(9)));
    assert_eq!(a.options.queue.as_deref(), Some("etl"));
    assert_eq!(a.on_failure, OnFailure::SkipDependents);
    assert_eq!(dag.jobs()[1].on_failure, OnFailure::FailWorkflow);
}

fn names(s: &Scheduler<'_>, of: Vec<usize>) -> Vec<String> {
    of.into_iter().map(|i| s.name(i).to_string()).collect()
}

#[test]
fn a_skipped_failure_skips_everything_downstream_and_nothing_else() {
    // a -> b -> d, a -> c -> d, c -> e; f is independent.
    let dag = diamond()
        .on_failure(OnFailure::SkipDependents)
        .add("e", job(&["c"]))
        .add("f", job(&[]))
        .build()
        .unwrap();
    let mut s = Scheduler::new(&dag);
    assert_eq!(names(&s, s.ready()), ["a", "f"]);
    s.start(0, Some(1));
    s.start(5, Some(2));
    s.complete(0, serde_json::json!(1));
    assert_eq!(names(&s, s.ready()), ["b", "c"]);
    s.start(1, Some(3));
    s.start(2, Some(4));
    s.fail(2, "boom".into());
    let skipped = JobStepState::Skipped { cause: "c".into() };
    assert_eq!((&s.states[3], &s.states[4]), (&skipped, &skipped));
    assert!(s.ready().is_empty(), "d waits for c, which failed");
    s.complete(1, serde_json::json!(2));
    s.complete(5, serde_json::json!(3));
    s.finish();
    let report = s.report();
    assert_eq!(report.stopped_by, None);
    assert_eq!(report.in_state("completed"), ["a", "b", "f"]);
    assert_eq!(report.in_state("skipped"), ["d", "e"]);
}

#[test]
fn a_failure_under_the_fail_rule_starts_nothing_more_and_skips_the_rest() {
    let dag = diamond().add("f", job(&[])).build().unwrap();
    let mut s = Scheduler::new(&dag);
    s.start(0, Some(1));
    s.start(4, Some(2));
    s.complete(0, serde_json::json!(1));
    s.start(1, Some(3));
    s.start(2, Some(4));
    s.fail(1, "boom".into());
    assert!(s.ready().is_empty());
    s.complete(2, serde_json::json!(2));
    assert!(
        s.ready().is_empty(),
        "d never starts once the workflow stops"
    );
    s.complete(4, serde_json::json!(3));
    s.finish();
    let report = s.report();
    assert_eq!(report.stopped_by.as_deref(), Some("b"));
    assert_eq!(
        report.state("d"),
        Some(&JobStepState::Skipped { cause: "b".into() })
    );
    assert_eq!(report.in_state("completed"), ["a", "c", "f"]);
    assert!(report.is_finished());
}

#[test]
fn a_child_with_parents_gets_its_input_and_each_parents_output() {
    #[derive(Debug, Clone, Copy)]
    struct Fed;
    impl Activity for Fed {
        const NAME: &'static str = "fed";
        type Input = JobInput<String>;
        type Output = u32;
        async fn run(
            _ctx: crate::ActivityContext,
            j: JobInput<String>,
        ) -> Result<u32, ActivityError> {
            Ok(j.parent::<u32>("a")? + j.parent::<u32>("b")?)
        }
    }
    let dag = JobWorkflow::builder()
        .add("a", job(&[]))
        .add("b", job(&[]))
        .add(
            "c",
            Job::with_parents(Fed, &"own".to_string()).depends_on(["a", "b"]),
        )
        .build()
        .unwrap();
    let mut s = Scheduler::new(&dag);
    s.complete(0, serde_json::json!(4));
    s.complete(1, serde_json::json!({"n": 5}));
    let input: JobInput<String> = s.input_of(2).unwrap().decode().unwrap();
    assert_eq!(input.input, "own");
    assert_eq!(input.parent::<u32>("a").unwrap(), 4);
    let wrong = input.parent::<u32>("b").unwrap_err();
    assert!(!wrong.is_retryable(), "{wrong}");
    assert!(
        input
            .parent::<u32>("zz")
            .unwrap_err()
            .text()
            .contains("does not depend on `zz`")
    );
    assert_eq!(
        s.input_of(0).unwrap(),
        Payload::json(&1u32).unwrap(),
        "plain jobs get their own input only"
    );
}
