"""A scripted pick-and-place expert for LIBERO, computed from the simulator's ground truth.

The expert reads the BDDL goal (``parsed_problem["goal_state"]``), the poses of the objects and
region sites, and the object extents from the collision geoms of the MuJoCo model, and drives
robosuite's OSC_POSE controller (LIBERO's action space, see ``vla_ros.conventions``) through the
phases approach -> descend -> grasp -> (extract from under an overhang) -> lift -> transport -> lower
-> release -> retreat.

Every action is a function of the current simulator state and of the expert's phase (plus the
per-episode random offsets drawn at :meth:`ScriptedExpert.reset`), so the expert can label states
a learner visits (DAgger) as well as drive its own episodes. It needs LIBERO, so it lives beside
the LIBERO protocol (``vla_ros.sim.libero_env``) and not in ``training/``.

Why one file of over 400 lines: scene geometry, the phase switch and the ``expert-eval`` command are still
together here. The four-suite work (issue #22) turns the expert into a package of skills (a goal planner, pick
and place, drawers, doors, knobs, pushing), and that split follows the skills. Splitting it now, by the old
single predicate, would only be done again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from vla_ros.conventions import ACTION_DIM, LIBERO_ACTION_SPACE

log = logging.getLogger(__name__)

PHASES = ("approach", "descend", "grasp", "extract", "lift", "transport", "lower", "release", "retreat",
          "done")

# Gripper site orientation with the fingers pointing down and closing along world y (the pose the
# Panda starts in, tilt removed): site x -> world y, site y -> world x, site z -> world -z.
_R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
_OPEN, _CLOSE = -1.0, 1.0  # LIBERO's gripper command
_MAX_SOLID_WIDTH = 0.072  # narrower than this across: grasp the body; wider: grasp the rim
_MIN_MOTION = 0.03  # controller units: keeps grasp/release frames above the no-op filter
_WRIST_ABOVE_GRIP = 0.21  # m, grip site -> wrist centre with the hand pointing down
_PALM_HALF_LENGTH = 0.11  # m, Panda hand half-length along the finger closing axis
_LOOKAHEAD = 0.15  # m along the carry path checked for obstacles
_COMFORT_REACH_XY = 0.66  # m, horizontal shoulder -> hand distance the grasp choice tries to stay within
_MIN_REACH_XY = 0.42  # m, closer to the shoulder the folded arm cannot lift (a bowl on the stove)
_Q7_SAFE = 2.0  # rad, aim to keep the last wrist joint within this (limit 2.9: arm travel adds to the turn)
_MAX_WRIST_REACH = 0.75  # m, shoulder -> wrist; the elbow locks straight at about 0.76


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _axis_angle(r: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis-angle vector (robust near 0 and pi)."""
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    if angle < 1e-6:
        return np.zeros(3)
    if np.pi - angle < 1e-3:  # axis from the symmetric part
        m = (r + np.eye(3)) / 2.0
        axis = np.sqrt(np.clip(np.diag(m), 0.0, None))
        i = int(np.argmax(axis))
        axis = m[:, i] / np.sqrt(m[i, i])
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2.0 * np.sin(angle))
    return axis * angle


def _target_rot(yaw: float, current: np.ndarray, q7: float | None = None) -> np.ndarray:
    """Hand-down orientation at ``yaw`` or ``yaw + pi`` (the same grasp: the gripper is symmetric).

    Picks the one that keeps the last wrist joint ``q7`` inside its range (+-2.9 rad; with the hand
    pointing down a turn of +d about world z moves q7 by -d), else the smaller turn from ``current``.
    """
    options = []
    for r in (_rot_z(yaw) @ _R_DOWN, _rot_z(yaw + np.pi) @ _R_DOWN):
        turn = _axis_angle(r @ current.T)
        over = 0.0 if q7 is None else max(0.0, abs(q7 - turn[2]) - _Q7_SAFE)
        options.append((over, float(np.linalg.norm(turn)), r))
    return min(options, key=lambda o: (o[0], o[1]))[2]


def _wrap_half_pi(a: float) -> float:
    """Wrap an angle to [-pi/2, pi/2): the gripper is symmetric under a half turn."""
    return float((a + np.pi / 2) % np.pi - np.pi / 2)


@dataclass
class Extents:
    """World-frame extents of one object's collision geometry."""

    points: np.ndarray  # (N, 3)
    center_xy: np.ndarray  # (2,) middle of the horizontal bounding box along the principal axes
    bottom: float
    top: float
    minor_axis: np.ndarray  # (2,) horizontal unit vector of the smallest width
    minor_width: float
    major_width: float


class SceneGeometry:
    """Ground-truth geometry of the objects in a LIBERO scene (collision geoms of each body subtree)."""

    def __init__(self, inner_env):
        self.env = inner_env
        self.model = inner_env.sim.model._model
        self.data = inner_env.sim.data._data
        self._geoms: dict[str, list[int]] = {}

    def geoms(self, name: str) -> list[int]:
        if name not in self._geoms:
            m = self.model
            root = self.env.obj_body_id[name]
            bodies = {root}
            for b in range(m.nbody):  # bodies are ordered parent-first
                if m.body_parentid[b] in bodies and b != 0:
                    bodies.add(b)
            ids = [g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies
                   and (m.geom_contype[g] or m.geom_conaffinity[g])]
            if not ids:  # no collision geoms: fall back to what is visible
                ids = [g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies]
            self._geoms[name] = ids
        return self._geoms[name]

    def geom_points(self, g: int) -> np.ndarray:
        """Points on the surface/corners of geom ``g`` in world coordinates."""
        m, d = self.model, self.data
        size = m.geom_size[g]
        t = int(m.geom_type[g])
        if t == 6:  # box
            local = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * size
        elif t == 7:  # mesh
            adr, n = m.mesh_vertadr[m.geom_dataid[g]], m.mesh_vertnum[m.geom_dataid[g]]
            local = m.mesh_vert[adr:adr + n]
        elif t in (3, 5):  # capsule, cylinder: two rings (+ caps for a capsule)
            ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
            ring = np.stack([np.cos(ang), np.sin(ang)], 1) * size[0]
            h = size[1] + (size[0] if t == 3 else 0.0)
            local = np.concatenate([np.c_[ring, np.full(12, -h)], np.c_[ring, np.full(12, h)]])
        elif t == 2:  # sphere
            local = np.concatenate([np.eye(3), -np.eye(3)]) * size[0]
        elif t == 4:  # ellipsoid
            local = np.concatenate([np.eye(3), -np.eye(3)]) * size[:3]
        else:
            local = np.concatenate([np.eye(3), -np.eye(3)]) * m.geom_rbound[g]
        rot = d.geom_xmat[g].reshape(3, 3)
        return local @ rot.T + d.geom_xpos[g]

    def points(self, name: str) -> np.ndarray:
        return np.concatenate([self.geom_points(g) for g in self.geoms(name)])

    def extents(self, name: str) -> Extents:
        p = self.points(name)
        xy = p[:, :2]
        mean = xy.mean(0)
        cov = np.cov((xy - mean).T) if len(xy) > 2 else np.eye(2)
        _, vecs = np.linalg.eigh(cov)
        minor, major = vecs[:, 0], vecs[:, 1]
        pm, pM = xy @ minor, xy @ major
        center = minor * (pm.min() + pm.max()) / 2 + major * (pM.min() + pM.max()) / 2
        return Extents(points=p, center_xy=center, bottom=float(p[:, 2].min()), top=float(p[:, 2].max()),
                       minor_axis=minor, minor_width=float(np.ptp(pm)), major_width=float(np.ptp(pM)))

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.env.obj_body_id[name]].copy()


@dataclass
class GraspPlan:
    offset_xy: np.ndarray  # grasp point relative to the object's body position (world frame)
    z_below_top: float  # grasp height below the object's top
    yaw: float  # gripper yaw (rad) about world z relative to _R_DOWN
    rim: bool


class ScriptedExpert:
    """Pick-and-place expert for LIBERO's ``on``/``in`` goals (libero_spatial, libero_object, part of goal).

    ``reset()`` at the start of each episode (after the env's reset), then ``act()`` every step.
    ``act()`` returns 7 LIBERO controller values in [-1, 1] (gripper -1 open, +1 close).
    """

    def __init__(self, env, seed: int = 0, *, max_speed: float = 1.0):
        self.env = env
        self.rng = np.random.default_rng(seed)
        self.max_speed = float(max_speed)
        self.phase = "done"
        self.phase_steps = 0
        self.retries = 0

    # ------------------------------------------------------------------ episode set-up
    @property
    def _inner(self):
        return self.env.env.env  # LiberoEpisodeEnv -> OffScreenRenderEnv -> LIBERO problem env

    def reset(self) -> None:
        inner = self._inner
        self.geo = SceneGeometry(inner)
        self.robot = inner.robots[0]
        self._shoulder_id = self.geo.model.body(self.robot.robot_model.naming_prefix + "link2").id
        goal = [list(map(str, g)) for g in inner.parsed_problem["goal_state"]]
        if len(goal) != 1 or goal[0][0].lower() not in ("on", "in"):
            raise NotImplementedError(f"the scripted expert handles one on/in goal, not {goal}")
        self.relation, self.obj, self.target = goal[0][0].lower(), goal[0][1], goal[0][2]
        if self.obj not in inner.obj_body_id:
            raise NotImplementedError(f"goal object {self.obj!r} is not a movable object")
        # Per-episode randomness: demonstrations differ, every action stays a function of state.
        r = self.rng
        self.noise = {
            "grasp_xy": r.uniform(-0.004, 0.004, 2),
            "grasp_depth": r.uniform(-0.004, 0.004),
            "place_xy": r.uniform(-0.007, 0.007, 2),
            "hover": r.uniform(0.06, 0.09),
            "clearance": r.uniform(0.035, 0.06),
            "gain": r.uniform(0.8, 1.0),
            "yaw": r.uniform(-0.08, 0.08),
            "close_steps": int(r.integers(4, 7)),
            "open_steps": int(r.integers(5, 8)),
        }
        self.plan: GraspPlan | None = None
        self._orient_cache: dict[float, np.ndarray] = {}
        self.retries = 0
        self._set_phase("approach")

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0
        self._last_pos = None
        self._last_gap = None

    @property
    def done(self) -> bool:
        return self.phase == "done"

    # ------------------------------------------------------------------ state
    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.geo.data
        sid = self.robot.eef_site_id
        return d.site_xpos[sid].copy(), d.site_xmat[sid].reshape(3, 3).copy()

    def _orientation(self, yaw: float, rot: np.ndarray) -> np.ndarray:
        """The hand-down target for ``yaw``, its half-turn twin chosen once (no chattering between
        the two as the wrist turns) and kept until the next plan."""
        key = round(float(yaw), 6)
        if key not in self._orient_cache:
            self._orient_cache[key] = _target_rot(yaw, rot, self._q7())
        return self._orient_cache[key]

    def _q7(self) -> float:
        return float(self.geo.data.qpos[self.robot._ref_joint_pos_indexes[-1]])

    def _finger_gap(self) -> float:
        q = self.geo.data.qpos[self.robot._ref_gripper_joint_pos_indexes]
        return float(q[0] - q[1])

    # ------------------------------------------------------------------ planning
    def _plan_grasp(self) -> GraspPlan:
        ext = self.geo.extents(self.obj)
        body = self.geo.body_pos(self.obj)
        height = ext.top - ext.bottom
        if ext.minor_width <= _MAX_SOLID_WIDTH:
            # Close across the narrowest horizontal direction, around the middle of the object; turn
            # up to ~40 degrees off it if the palm (long along the closing axis) would hit a neighbour.
            theta0 = float(np.arctan2(ext.minor_axis[1], ext.minor_axis[0]))
            depth = float(np.clip(0.5 * height, 0.012, 0.03))
            grasp_xy = ext.center_xy + self.noise["grasp_xy"]
            boxes = self._obstacle_boxes(exclude=(self.obj,))
            boxes = boxes[boxes[:, 4] > ext.top - depth + 0.02]  # only what reaches palm height
            best, best_score = theta0, -np.inf
            for off in np.radians([0, 10, -10, 20, -20, 30, -30, 40, -40]):
                if ext.minor_width / np.cos(off) > _MAX_SOLID_WIDTH + 0.003:
                    continue
                u = np.array([np.cos(theta0 + off), np.sin(theta0 + off)])
                score = min(self._palm_clearance(boxes, grasp_xy, u), 0.04) - 0.01 * abs(off)
                if score > best_score:
                    best, best_score = theta0 + off, score
            return GraspPlan(offset_xy=grasp_xy - body[:2],
                             z_below_top=depth + self.noise["grasp_depth"] * (height > 0.03),
                             yaw=_wrap_half_pi(best - np.pi / 2 + self.noise["yaw"]), rim=False)
        # Container (bowl): pinch the rim wall, on the side with the most free space around it.
        c = ext.center_xy
        radius = float(np.max(np.linalg.norm(ext.points[:, :2] - c, axis=1)))
        others = self._obstacle_frames(exclude=(self.obj,))
        away_dir = c - self.geo.data.xpos[self._shoulder_id][:2]
        away_dir = away_dir / max(float(np.linalg.norm(away_dir)), 1e-9)
        shoulder = self.geo.data.xpos[self._shoulder_id][:2]
        place_xy, _ = self._place_target()
        # Under an overhang (a bowl in a drawer) the object is first pulled out along ``slide``: pinch
        # the rim on that side, so the pull pushes the inner finger against the wall, not sideways.
        over = self._overhead(ext)
        slide = np.zeros(2) if len(over) == 0 else c - over.mean(axis=0)
        slide /= max(float(np.linalg.norm(slide)), 1e-9)
        best, best_score = None, -np.inf
        for theta in np.linspace(-np.pi, np.pi, 16, endpoint=False):
            d = np.array([np.cos(theta), np.sin(theta)])
            grasp = c + d * (radius - 0.006)
            yaw = _wrap_half_pi(theta - np.pi / 2)
            z = ext.top - 0.016
            probes = [np.r_[grasp + d * sd, z + dz] for sd in (-0.045, 0.045) for dz in (0.0, 0.03)]
            probes += [np.r_[grasp + d * sd, z + 0.07] for sd in (-0.1, -0.05, 0.0, 0.05, 0.1)]
            score = min(self._clearance(others, np.asarray(probes)), 0.06) - 0.01 * abs(yaw)
            score += 0.1 * float(d @ slide)
            # where the hand will be when picking and when placing: both must stay well inside the
            # arm's reach (a straight elbow is a singularity the controller cannot leave)
            for hand in (grasp, place_xy + (grasp - c)):
                r = float(np.linalg.norm(hand - shoulder))
                score -= 2.0 * max(0.0, r - _COMFORT_REACH_XY) + 2.0 * max(0.0, _MIN_REACH_XY - r)
            # the far side is at the edge of the arm's reach (a straight elbow is a singularity the
            # controller cannot leave): prefer the side facing the robot's shoulder
            away = float(d @ away_dir)
            score -= 0.04 * max(0.0, away) + (1.0 if away > 0.3 else 0.0)
            if score > best_score:
                best, best_score = (d, yaw, grasp), score
        d, yaw, grasp = best
        return GraspPlan(offset_xy=grasp - body[:2] + self.noise["grasp_xy"] * 0.5,
                         z_below_top=0.016 + 0.5 * self.noise["grasp_depth"],
                         yaw=_wrap_half_pi(yaw + 0.5 * self.noise["yaw"]), rim=True)

    def _obstacle_boxes(self, exclude: tuple[str, ...]) -> np.ndarray:
        """(G, 6) world bounding boxes (xmin, xmax, ymin, ymax, zmax, zmin) of every other collision geom.

        Boxes, not corner points: a basket wall is one long box whose corners lie far apart.
        """
        names = [n for n in self._inner.obj_body_id if n not in exclude]
        rows = []
        for n in names:
            for g in self.geo.geoms(n):
                p = self.geo.geom_points(g)
                rows.append((p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max(), p[:, 2].max(),
                             p[:, 2].min()))
        return np.asarray(rows, dtype=np.float64).reshape(-1, 6)

    def _overhead(self, ext: Extents, margin: float = 0.0) -> np.ndarray:
        """xy centres of obstacle boxes above the object's middle and over its footprint (a cabinet top
        over a bowl in a drawer): lifting straight up would hit them."""
        boxes = self._obstacle_boxes(exclude=(self.obj,))
        c = ext.center_xy
        radius = float(np.max(np.linalg.norm(ext.points[:, :2] - c, axis=1)))
        dx = np.maximum(np.maximum(boxes[:, 0] - c[0], c[0] - boxes[:, 1]), 0.0)
        dy = np.maximum(np.maximum(boxes[:, 2] - c[1], c[1] - boxes[:, 3]), 0.0)
        above = boxes[:, 5] > ext.bottom + 0.5 * (ext.top - ext.bottom)
        hit = above & (np.hypot(dx, dy) < radius + margin)
        return np.c_[(boxes[hit, 0] + boxes[hit, 1]) / 2, (boxes[hit, 2] + boxes[hit, 3]) / 2]

    def _obstacle_points(self, exclude: tuple[str, ...]) -> np.ndarray:
        pts = [self.geo.points(n) for n in self._inner.objects_dict if n not in exclude]
        pts += [self.geo.points(n) for n in self._inner.fixtures_dict if n not in exclude
                and n in self._inner.obj_body_id]
        return np.concatenate(pts) if pts else np.zeros((0, 3))

    @staticmethod
    def _palm_clearance(boxes: np.ndarray, grasp_xy: np.ndarray, u: np.ndarray) -> float:
        """xy distance from the palm (a segment along the closing axis ``u``) to the obstacle boxes."""
        if len(boxes) == 0:
            return 1.0
        pts = grasp_xy + np.linspace(-_PALM_HALF_LENGTH, _PALM_HALF_LENGTH, 9)[:, None] * u
        dx = np.maximum(np.maximum(boxes[None, :, 0] - pts[:, None, 0], pts[:, None, 0] - boxes[None, :, 1]), 0.0)
        dy = np.maximum(np.maximum(boxes[None, :, 2] - pts[:, None, 1], pts[:, None, 1] - boxes[None, :, 3]), 0.0)
        return float(np.hypot(dx, dy).min())

    def _obstacle_frames(self, exclude: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every other collision geom as an oriented box: centres (G, 3), rotations (G, 3, 3), half sizes (G, 3)."""
        centres, rots, halves = [], [], []
        d = self.geo.data
        for n in self._inner.obj_body_id:
            if n in exclude:
                continue
            for g in self.geo.geoms(n):
                rot = d.geom_xmat[g].reshape(3, 3)
                local = (self.geo.geom_points(g) - d.geom_xpos[g]) @ rot  # back into the geom frame
                lo, hi = local.min(0), local.max(0)
                centres.append(d.geom_xpos[g] + rot @ ((lo + hi) / 2))
                rots.append(rot)
                halves.append((hi - lo) / 2)
        # A movable object's whole bounding box too: a finger inside a ramekin is between its walls,
        # far from every wall box, yet it would pinch the ramekin along with the bowl.
        for n in self._inner.objects_dict:
            if n in exclude or n not in self._inner.obj_body_id:
                continue
            p = self.geo.points(n)
            lo, hi = p.min(0), p.max(0)
            centres.append((lo + hi) / 2)
            rots.append(np.eye(3))
            halves.append((hi - lo) / 2)
        if not centres:
            return np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3))
        return np.asarray(centres), np.asarray(rots), np.asarray(halves)

    @staticmethod
    def _clearance(frames: tuple[np.ndarray, np.ndarray, np.ndarray], probes: np.ndarray) -> float:
        """Smallest distance from the probe points (fingers, palm) to any obstacle's oriented box.

        Oriented boxes, not corner points or world-aligned boxes: a drawer wall is a long thin box,
        rotated with its cabinet.
        """
        centres, rots, halves = frames
        if len(centres) == 0:
            return 1.0
        rel = probes[:, None, :] - centres[None]  # (P, G, 3)
        local = np.einsum("pgi,gij->pgj", rel, rots)  # R^T (p - c)
        out = np.maximum(np.abs(local) - halves[None], 0.0)
        return float(np.linalg.norm(out, axis=2).min())

    def _place_target(self) -> tuple[np.ndarray, float]:
        """(xy where the object's body should end up, z its bottom should be released at)."""
        inner = self._inner
        if self.target in inner.object_sites_dict:
            site = inner.object_sites_dict[self.target]
            pos = inner.sim.data.get_site_xpos(self.target).copy()
            half = np.abs(inner.sim.data.get_site_xmat(self.target) @ np.asarray(site.size, float))
            if self.relation == "in":
                parent = getattr(site, "parent_name", None) or self.target.split("_contain")[0]
                rim = self.geo.extents(parent).top if parent in inner.obj_body_id else pos[2] + half[2]
                bottom = max(pos[2] - half[2] + 0.02, rim - 0.03)
            else:
                bottom = pos[2] + 0.01
            return pos[:2] + self.noise["place_xy"], bottom
        ext = self.geo.extents(self.target)
        xy = self.geo.body_pos(self.target)[:2]
        if self.relation == "in":
            return xy + self.noise["place_xy"], ext.bottom + 0.03
        return xy + self.noise["place_xy"], ext.top + 0.012

    # ------------------------------------------------------------------ control
    def _move(self, target: np.ndarray, yaw: float, gripper: float, speed: float | None = None) -> np.ndarray:
        pos, rot = self._eef()
        a = np.zeros(ACTION_DIM)
        gain = self.noise["gain"]
        a[:3] = (target - pos) / LIBERO_ACTION_SPACE.linear_unit_m * gain * 1.5
        vmax = self.max_speed if speed is None else speed
        n = np.linalg.norm(a[:3])
        if n > vmax:
            a[:3] *= vmax / n
        r_err = self._orientation(yaw, rot) @ rot.T
        a[3:6] = np.clip(_axis_angle(r_err) / LIBERO_ACTION_SPACE.angular_unit_rad * 1.5, -0.6, 0.6)
        a[6] = gripper
        return a

    def _keep_moving(self, a: np.ndarray) -> np.ndarray:
        """Grasp/release frames must not look like no-ops (OpenVLA filters near-zero actions)."""
        if np.linalg.norm(a[:3]) < _MIN_MOTION:
            jitter = self.rng.normal(0.0, 1.0, 3)
            jitter[2] = abs(jitter[2])
            a[:3] += jitter / np.linalg.norm(jitter) * _MIN_MOTION
        return a

    def _stalled(self, pos: np.ndarray, tol: float = 0.0015) -> bool:
        last, self._last_pos = self._last_pos, pos.copy()
        return last is not None and np.linalg.norm(pos - last) < tol

    def act(self) -> np.ndarray:
        """The expert's action for the current simulator state (7 LIBERO controller values)."""
        if self.phase == "done" and not hasattr(self, "geo"):
            raise RuntimeError("call reset() after the env's reset before act()")
        a = self._act()
        self.phase_steps += 1
        return np.clip(a, -1.0, 1.0)

    def _act(self) -> np.ndarray:  # one branch per phase reads best as a whole
        pos, _ = self._eef()
        obj = self.geo.body_pos(self.obj)
        if self.phase in ("approach", "descend") and (self.plan is None or self.phase == "approach"):
            self.plan = self._plan_grasp()
        plan = self.plan
        ext = self.geo.extents(self.obj)
        grasp = np.r_[obj[:2] + plan.offset_xy, ext.top - plan.z_below_top]

        if self.phase == "approach":
            hover = grasp + np.array([0.0, 0.0, self.noise["hover"]])
            climbing = pos[2] < hover[2] - 0.03 and np.linalg.norm(pos[:2] - hover[:2]) > 0.03
            if climbing:
                hover[:2] = pos[:2]  # climb first when low, so the hand does not sweep objects
            err = hover - pos
            _, rot = self._eef()
            ori_err = np.linalg.norm(_axis_angle(self._orientation(plan.yaw, rot) @ rot.T))
            if np.linalg.norm(err[:2]) < 0.008 and abs(err[2]) < 0.02 and ori_err < 0.08 and not climbing:
                self._set_phase("descend")
                return self._act()
            return self._move(hover, plan.yaw, _OPEN)

        if self.phase == "descend":
            err = grasp - pos
            stalled = self._stalled(pos) and self.phase_steps > 6
            if np.linalg.norm(err) < 0.006 or stalled or self.phase_steps > 40:
                self._set_phase("grasp")
                return self._act()
            speed = 0.5 if err[2] > -0.03 else None  # slow down for the last few centimetres
            return self._move(grasp, plan.yaw, _OPEN, speed)

        if self.phase == "grasp":
            gap, last = self._finger_gap(), self._last_gap
            self._last_gap = gap
            settled = last is not None and abs(gap - last) < 0.0008 \
                and self.phase_steps >= self.noise["close_steps"]
            if settled or self.phase_steps >= 25:
                self._lift_from = pos[2]
                self._obj_from = obj[2]
                self._bottom_from = ext.bottom
                self._set_phase("extract" if len(self._overhead(ext)) else "lift")
                return self._act()
            return self._keep_moving(self._move(grasp, plan.yaw, _CLOSE, 0.2))

        place_xy, place_bottom = self._place_target()
        # Where the hand must be for the object's body to reach place_xy (live offset: slip-proof).
        hand_xy = place_xy + (pos[:2] - obj[:2])
        bottom_below_hand = pos[2] - ext.bottom
        baseline = min(getattr(self, "_bottom_from", place_bottom), place_bottom)
        clear = self._required_bottom(ext, place_xy, baseline) + self.noise["clearance"]
        carry_z = clear + bottom_below_hand

        if self.phase == "extract":
            # Slide out from under what is overhead (a drawer: along its opening) before lifting.
            over = self._overhead(ext, margin=0.015)
            stuck = self._stalled(pos, 0.002) and self.phase_steps > 4  # against the drawer's front wall
            if len(over) == 0 or stuck or self.phase_steps > 30:
                self._lift_from = pos[2]
                self._obj_from = obj[2]
                self._set_phase("lift")
                return self._act()
            away = ext.center_xy - over.mean(axis=0)
            away /= max(float(np.linalg.norm(away)), 1e-9)
            return self._move(np.r_[pos[:2] + away * 0.03, pos[2] + 0.002], plan.yaw, _CLOSE, 0.6)

        if self.phase in ("lift", "transport"):
            lifted = pos[2] - self._lift_from
            # a rim-pinched bowl tilts and lags at first: judge the grasp only after a clear lift
            if (lifted > 0.06 and (obj[2] - self._obj_from) < 0.3 * lifted) or self._finger_gap() < 0.0015:
                return self._regrasp()
            err = hand_xy - pos[:2]
            moving = not self._stalled(pos, 0.004)  # the arm lags the controller: settle first
            if self.phase == "transport" and np.linalg.norm(err) < 0.008 and not moving:
                self._set_phase("lower")
                return self._act()
            if ext.bottom < clear - self.noise["clearance"] * 0.5:
                # Not clear of what is ahead yet: rise (slow sideways motion keeps it from dragging).
                if self.phase == "transport":
                    self._set_phase("lift")
                return self._move(np.r_[pos[:2], carry_z], plan.yaw, _CLOSE)
            if self.phase == "lift":
                self._set_phase("transport")
            target = np.r_[hand_xy, carry_z]
            if clear > place_bottom + 0.1:  # carrying high (off a cabinet top): mind the reach
                target = self._within_reach(target)
            return self._move(target, plan.yaw, _CLOSE)

        if self.phase == "lower":
            target_z = place_bottom + bottom_below_hand
            stalled = self._stalled(pos, 0.001) and self.phase_steps > 6
            if pos[2] - target_z < 0.006 or stalled or self.phase_steps > 40:
                self._set_phase("release")
                return self._act()
            return self._move(np.r_[hand_xy, target_z], plan.yaw, _CLOSE, 0.6)

        if self.phase == "release":
            if self.phase_steps >= self.noise["open_steps"]:
                self._retreat_z = pos[2] + 0.08
                self._set_phase("retreat")
                return self._act()
            return self._keep_moving(self._move(np.r_[pos[:2], pos[2] + 0.003], plan.yaw, _OPEN, 0.1))

        if self.phase == "retreat":
            if pos[2] > self._retreat_z - 0.01:
                self._set_phase("done")
            return self._keep_moving(self._move(np.r_[pos[:2], self._retreat_z], plan.yaw, _OPEN, 0.6))

        # done: hover in place, gently moving (the episode ends on the success check). If the goal
        # does not hold (the object rolled off, or landed off-centre), pick it up and place it again.
        if self.phase_steps >= 4 and not self.env.env.check_success():
            return self._regrasp()
        return self._keep_moving(self._move(pos + np.array([0.0, 0.0, 0.002]), plan.yaw, _OPEN, 0.1))

    def _regrasp(self) -> np.ndarray:
        self.retries += 1
        log.info("grasp of %s failed; retry %d", self.obj, self.retries)
        self.plan = None
        self._orient_cache.clear()
        self._set_phase("approach")
        pos, _ = self._eef()
        a = self._move(pos + np.array([0.0, 0.0, 0.05]), 0.0, _OPEN, 0.8)  # open and rise before re-planning
        a[3:6] = 0.0
        return a

    def _within_reach(self, target: np.ndarray) -> np.ndarray:
        """Pull a carry waypoint toward the robot so the arm never stretches straight.

        A straight Panda elbow (joint 4 at its limit) is a singularity the OSC controller cannot leave
        toward the robot; high carries over far targets (a bowl taken from the cabinet top) end there.
        The wrist sits about ``_WRIST_ABOVE_GRIP`` above the grip site when the hand points down.
        """
        shoulder = self.geo.data.xpos[self._shoulder_id]
        v = target + np.array([0.0, 0.0, _WRIST_ABOVE_GRIP]) - shoulder
        if np.linalg.norm(v) <= _MAX_WRIST_REACH:
            return target
        r_xy = float(np.linalg.norm(v[:2]))
        s = np.sqrt(max(_MAX_WRIST_REACH**2 - v[2] ** 2, 0.0)) / max(r_xy, 1e-9)
        out = target.copy()
        out[:2] = shoulder[:2] + v[:2] * s
        return out

    def _required_bottom(self, ext: Extents, goal_xy: np.ndarray, baseline: float) -> float:
        """Lowest height the carried object's bottom may have here and a little ahead on its way.

        Obstacles are the collision points of every other object and fixture (drawer walls and cabinet
        tops included) within the object's footprint of a short segment toward the goal; the height
        falls again once the object is past them, so the arm does not carry at the edge of its reach.
        """
        boxes = self._obstacle_boxes(exclude=(self.obj,))
        start = ext.center_xy
        seg = goal_xy - start
        length = float(np.linalg.norm(seg))
        if length > 1e-6:
            seg = seg / length * min(length, _LOOKAHEAD)
        footprint = float(np.max(np.linalg.norm(ext.points[:, :2] - start, axis=1))) + 0.02
        samples = start + np.linspace(0.0, 1.0, 6)[:, None] * seg  # (6, 2)
        # xy distance of each sample to each obstacle geom's bounding box (0 inside it)
        dx = np.maximum.reduce([boxes[None, :, 0] - samples[:, None, 0], np.zeros((6, len(boxes))),
                                samples[:, None, 0] - boxes[None, :, 1]])
        dy = np.maximum.reduce([boxes[None, :, 2] - samples[:, None, 1], np.zeros((6, len(boxes))),
                                samples[:, None, 1] - boxes[None, :, 3]])
        hit = (np.hypot(dx, dy) < footprint).any(axis=0)
        near = boxes[hit, 4]
        return max(float(near.max()) if len(near) else -np.inf, baseline)


# ---------------------------------------------------------------------- evaluation on the fixed init states
def evaluate(suite: str, task_ids: list[int], init_states: list[int], seed: int = 0,
             log_path: str | None = None, run_missing: bool = True) -> dict[int, dict]:
    """Run the expert on the suite's fixed init states (physics only); per task: successes, steps."""
    import json
    import os

    from vla_ros.sim.libero_env import LiberoEpisodeEnv

    done: dict[tuple[int, int], dict] = {}
    if log_path and os.path.isfile(log_path):  # resume: episodes already in the log count as run
        with open(log_path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("suite") == suite:
                    done[(r["task"], r["init_state"])] = r
    from vla_ros.conventions import max_steps_for
    from vla_ros.sim.libero_env import task_names

    names = task_names(suite)
    results: dict[int, dict] = {}
    for task_id in task_ids:
        rows = []
        env = expert = None
        try:
            for i in init_states:
                if (task_id, i) in done:
                    rows.append(done[(task_id, i)])
                    continue
                if not run_missing:
                    continue
                if env is None:  # only for episodes still to run
                    env = LiberoEpisodeEnv(suite, task_id, cameras=(), seed=seed)
                    # The init state overwrites the whole simulator state, so rebuilding the model at
                    # every reset (LIBERO's default hard reset, ~3-10 s) buys nothing here.
                    env.env.env.hard_reset = False
                    expert = ScriptedExpert(env, seed=seed + task_id)
                env.reset(i)
                expert.rng = np.random.default_rng([seed, task_id, i])  # per episode: resumable, reproducible
                expert.reset()
                while not env.done:
                    env.step(expert.act())
                rows.append({"init_state": i, "success": env.success, "steps": env.step_count,
                             "retries": expert.retries})
                if log_path:
                    with open(log_path, "a") as f:
                        f.write(json.dumps({"suite": suite, "task": task_id, **rows[-1]}) + "\n")
        finally:
            if env is not None:
                env.close()
        ok = [r["steps"] for r in rows if r["success"]]
        results[task_id] = {
            "instruction": names[task_id], "episodes": len(rows), "successes": len(ok),
            "mean_steps": float(np.mean(ok)) if ok else float("nan"), "max_steps": max(ok, default=0),
            "step_limit": max_steps_for(suite),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m vla_ros.sim.expert``: the expert's success rate on the suites' fixed init states."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--tasks", default="all", help="comma-separated task ids or 'all'")
    p.add_argument("--init-states", type=int, default=50, help="first N fixed init states per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", default=None, help="append one JSON line per episode here")
    p.add_argument("--out", default=None, help="write the per-task summary JSON here")
    p.add_argument("--report-only", action="store_true", help="only summarise the init states in --log")
    p.add_argument("--block", type=int, default=0, help="run init states in blocks of N across tasks (needs --log)")
    a = p.parse_args(argv)
    from vla_ros.sim.libero_env import task_names

    n_tasks = len(task_names(a.suite))
    tasks = list(range(n_tasks)) if a.tasks == "all" else [int(t) for t in a.tasks.split(",")]
    inits = list(range(a.init_states))
    if a.report_only and not a.log:
        p.error("--report-only needs --log")
    if a.block and a.log and not a.report_only:
        # init states in blocks across all tasks: a run cut short still covers every task evenly
        for b in range(0, len(inits), a.block):
            evaluate(a.suite, tasks, inits[b:b + a.block], a.seed, a.log)
    res = evaluate(a.suite, tasks, inits, a.seed, a.log, run_missing=not a.report_only)
    total = sum(r["successes"] for r in res.values())
    n = sum(r["episodes"] for r in res.values())
    print(f"| {a.suite} task | instruction | success | mean steps (max) / limit |")
    print("|---|---|---|---|")
    for t, r in res.items():
        print(f"| {t} | {r['instruction']} | {r['successes']}/{r['episodes']} | "
              f"{r['mean_steps']:.0f} ({r['max_steps']}) / {r['step_limit']} |")
    print(f"| all | | {total}/{n} ({100.0 * total / max(n, 1):.1f}%) | |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"suite": a.suite, "seed": a.seed, "tasks": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
