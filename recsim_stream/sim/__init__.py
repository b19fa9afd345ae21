"""The simulator: a clustered catalogue, users with drifting interests, interleaved sessions."""

from recsim_stream.sim.catalogue import Catalogue, ClusterProfile
from recsim_stream.sim.simulator import SimTruth, Simulator
from recsim_stream.sim.users import Users

__all__ = ["Catalogue", "ClusterProfile", "SimTruth", "Simulator", "Users"]
