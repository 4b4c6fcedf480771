//! The communication graph: one node per piece of live state with its memory and CPU weight, and
//! one undirected weighted edge per pair of nodes that talk.

use std::collections::HashMap;

use super::{PartitionError, Result};

/// A piece of live state: what it weighs on the worker that holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    /// Its memory footprint, in bytes.
    pub memory: u64,
    /// Its CPU weight, in any unit shared by all nodes (for example turns per second).
    pub cpu: f64,
}

/// Traffic between two nodes `a < b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    /// The lower node index.
    pub a: u32,
    /// The higher node index.
    pub b: u32,
    /// Messages plus bytes over a constant, decayed by the caller; always positive.
    pub weight: f64,
}

/// Who talks to whom: nodes with weights and undirected weighted edges, built incrementally.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    /// Each node's edges, as (other node, edge index), in the order they were added.
    adjacency: Vec<Vec<(u32, u32)>>,
    /// Finds the edge of a pair, to merge duplicates. Only looked up, never iterated.
    index: HashMap<(u32, u32), u32>,
    total_weight: f64,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node and returns its index (the number of nodes before it).
    pub fn add_node(&mut self, memory: u64, cpu: f64) -> u32 {
        let index = self.nodes.len() as u32;
        self.nodes.push(Node { memory, cpu });
        self.adjacency.push(Vec::new());
        index
    }

    /// Adds `weight` to the edge between `a` and `b`, creating it if needed. A loop (`a == b`)
    /// and a weight that is not positive and finite are ignored: neither says anything about
    /// where the two should be.
    pub fn add_edge(&mut self, a: u32, b: u32, weight: f64) -> Result<()> {
        for node in [a, b] {
            self.check(node)?;
        }
        if a == b || !(weight > 0.0 && weight.is_finite()) {
            return Ok(());
        }
        let key = (a.min(b), a.max(b));
        match self.index.get(&key) {
            Some(&edge) => self.edges[edge as usize].weight += weight,
            None => {
                let edge = self.edges.len() as u32;
                self.edges.push(Edge {
                    a: key.0,
                    b: key.1,
                    weight,
                });
                self.index.insert(key, edge);
                self.adjacency[a as usize].push((b, edge));
                self.adjacency[b as usize].push((a, edge));
            }
        }
        self.total_weight += weight;
        Ok(())
    }

    /// Sets a node's memory and CPU weight.
    pub fn set_node(&mut self, node: u32, weight: Node) -> Result<()> {
        self.check(node)?;
        self.nodes[node as usize] = weight;
        Ok(())
    }

    /// The nodes, by index.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The edges, in the order they were first added.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The sum of all edge weights.
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// A node's neighbours and the weight of the edge to each.
    pub fn neighbours(&self, node: u32) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.adjacency
            .get(node as usize)
            .into_iter()
            .flatten()
            .map(|&(other, edge)| (other, self.edges[edge as usize].weight))
    }

    pub(super) fn check(&self, node: u32) -> Result<()> {
        if (node as usize) < self.nodes.len() {
            Ok(())
        } else {
            Err(PartitionError::UnknownNode {
                node,
                nodes: self.nodes.len(),
            })
        }
    }
}
