"""Vectorised observations, rewards and costs for Safety-Gymnasium's navigation tasks.

safety-gymnasium 1.0.0 computes a navigation step's observation, reward and cost in Python
loops over objects and lidar bins, looking every body, sensor and geom up by name on every
call (``data.body(f'hazard{i}')``, ``model.sensor(name)``, ``model.geom(g).name`` for each
contact, ...), and checks the observation dict against its space before flattening it.
On SafetyPointButton1-v0 that Python is ~90 % of a step; MuJoCo's physics is ~7 %.

:func:`install` swaps a live task's class for a subclass (:class:`FastNavigationTask`
mixed in front of the task's own class) whose methods compute the SAME numbers with the
ids looked up once per compiled model and numpy vectorised over objects and bins:

* ``obs``: sensors copied straight from ``sensordata`` into the flat observation (sin/cos
  of hinge angles and quaternion matrices as upstream), the pseudo-lidar of all lidar
  objects in one pass, written at the offsets ``gymnasium.spaces.utils.flatten`` uses.
  Natural lidar, compasses and vision are rare (no registered Goal/Button/Push/Circle
  task uses the first two) and use safety-gymnasium's own methods.
* ``calculate_cost``: hazard distances vectorised; contact costs (pillars, buttons,
  gremlins, vases) from per-geom masks over ``data.contact.geom1/geom2`` instead of
  names per contact; vase velocities with cached body ids.
* ``dist_goal`` / ``dist_box`` / ``dist_box_goal`` (reward and goal test) and the button
  goal test with cached ids; gremlins moved with cached mocap ids.

Exactness: every formula is evaluated with the same floating-point operations in the same
order as upstream (e.g. the ego-frame rotation as ``w0*m0 + w1*m1 + w2*m2``, which is what
``numpy.matmul`` of a 3-vector does, and ``abs``/``angle`` of complex arrays as upstream's
complex scalars), so observations, rewards, costs and infos match safety-gymnasium's path;
``tests/envs/test_fast_observations.py`` asserts that over thousands of steps per task.
One upstream check is not repeated: the assertion that the observation dict lies in its
space (lidar values are in [0, 1] by construction; NaN/inf observations are caught by
:class:`rllib_kfcpo.envs.SafetyGymnasiumEnv`'s finiteness check).

The fast path is written against safety-gymnasium 1.0.0: :func:`install` refuses any
other version (see :func:`supported`), and tasks outside :data:`SUPPORTED_TASKS` keep
upstream's code. It lives on the task object: a ``Builder`` rebuilt by pickling
(``EzPickle`` re-creates it from its constructor arguments) has upstream's task class
again; :func:`rllib_kfcpo.envs.make_safety_env` is how envs with the fast path are made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np

#: The safety-gymnasium release whose code this module reproduces.
SUPPORTED_VERSION = "1.0.0"

#: Task classes (``safety_gymnasium.tasks``) that get the fast path.
SUPPORTED_TASKS = frozenset(
    f"{task}Level{level}" for task in ("Goal", "Button", "Push", "Circle") for level in range(3)
)

_TWO_PI = np.pi * 2
_COMPLEX = np.complex128


def supported() -> tuple[bool, str]:
    """``(ok, reason)``: whether the installed safety-gymnasium is the supported version."""
    from rllib_kfcpo.envs.compat import import_safety_gymnasium

    version = getattr(import_safety_gymnasium(), "__version__", "unknown")
    if version != SUPPORTED_VERSION:
        return False, (f"the fast navigation path reproduces safety-gymnasium "
                       f"{SUPPORTED_VERSION}, but {version} is installed")
    return True, ""


def _body_names(obstacle: Any) -> list[str] | None:
    """The bodies whose ``xpos`` upstream's ``obstacle.pos`` returns, in order."""
    kind = type(obstacle).__name__
    if kind in ("Goal", "PushBox"):
        return [obstacle.name]
    if kind in ("Hazards", "Vases", "Pillars", "Buttons"):
        return [f"{obstacle.name[:-1]}{i}" for i in range(obstacle.num)]
    if kind == "Gremlins":
        return [f"gremlin{i}obj" for i in range(obstacle.num)]
    return None


@dataclass
class _Layout:
    """Everything looked up by name once per compiled model."""

    model: Any
    size: int
    agent: int
    geom_names: list[str]
    agent_geoms: np.ndarray
    raw_dst: np.ndarray
    raw_src: np.ndarray
    hinges: list[tuple[int, int]] = field(default_factory=list)  # (dst, sensordata adr)
    quats: list[tuple[int, int]] = field(default_factory=list)  # (dst, adr)
    lidar_bodies: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    lidar_slot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    lidar_const: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (slot, xy)
    lidar_dst: list[int] = field(default_factory=list)  # start offset of each slot
    lidar_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    lidar_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    lidar_out: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    lidar_empty: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    slow_lidar: list[tuple[int, Any]] = field(default_factory=list)  # (dst, obstacle)
    compass: list[tuple[int, Any]] = field(default_factory=list)
    buttons_lidar: int | None = None
    bodies: dict[str, np.ndarray] = field(default_factory=dict)  # obstacle name -> ids
    prefix_geoms: dict[str, np.ndarray] = field(default_factory=dict)
    mocaps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))


def _offsets(space_dict: Any) -> dict[str, tuple[int, int]]:
    """Where each key's values lie in ``gymnasium.spaces.utils.flatten``'s output."""
    out, start = {}, 0
    for key, space in space_dict.spaces.items():
        size = int(np.prod(space.shape))
        out[key] = (start, start + size)
        start += size
    return out


class FastNavigationTask:
    """The methods :func:`fast_class` gives a navigation task's subclass (module doc).

    Not a base class: the methods are copied into a direct subclass of the upstream task
    class, so that the instance layout is the upstream class's and a live task's
    ``__class__`` can be swapped. ``self._fast_upstream`` is the upstream class.
    """

    # The model and data are read as ``self.world.engine.model`` / ``.data`` (what
    # upstream's ``self.model`` / ``self.data`` properties return, without two property
    # calls each: they were ~10 % of a fast step).
    _fast_upstream: type = object
    _fast_layout: _Layout | None = None
    _fast_forwarded: bool = False  # mj_forward ran since the state last changed

    # ----------------------------------------------------------------------- layout
    def _fast(self) -> _Layout:
        layout = self._fast_layout
        if layout is None or layout.model is not self.world.engine.model:
            layout = self._fast_layout = self._build_fast_layout()
        return layout

    def _build_fast_layout(self) -> _Layout:  # noqa: C901 - one pass over the obs keys
        model, agent = self.world.engine.model, self.agent
        offsets = _offsets(self.obs_info.obs_space_dict)
        size = max((stop for _, stop in offsets.values()), default=0)
        names = [model.geom(i).name for i in range(model.ngeom)]
        agent_names = set(agent.body_info.geom_names)
        raw_dst: list[int] = []
        raw_src: list[int] = []
        layout = _Layout(model=model, size=size, agent=model.body("agent").id,
                         geom_names=names,
                         agent_geoms=np.array([n in agent_names for n in names], bool),
                         raw_dst=np.zeros(0, np.intp), raw_src=np.zeros(0, np.intp))

        def adr(sensor: str) -> tuple[int, int]:
            sid = model.sensor(sensor).id
            return int(model.sensor_adr[sid]), int(model.sensor_dim[sid])

        def raw(key: str, skip: int = 0) -> None:
            start, stop = offsets[key]
            first, dim = adr(key)
            assert stop - start == dim - skip, key
            raw_dst.extend(range(start, stop))
            raw_src.extend(range(first + skip, first + dim))

        info, conf = agent.sensor_info, agent.sensor_conf
        for sensor in (*conf.sensors, *info.hinge_vel_names, *info.ballangvel_names):
            raw(sensor)
        if info.freejoint_pos_name:
            raw(info.freejoint_pos_name, skip=2)
        if info.freejoint_qvel_name:
            raw(info.freejoint_qvel_name)
        if conf.sensors_angle_components:
            layout.hinges = [(offsets[s][0], adr(s)[0]) for s in info.hinge_pos_names]
            layout.quats = [(offsets[s][0], adr(s)[0]) for s in info.ballquat_names]
        else:
            for sensor in (*info.hinge_pos_names, *info.ballquat_names):
                raw(sensor)
        layout.raw_dst = np.asarray(raw_dst, np.intp)
        layout.raw_src = np.asarray(raw_src, np.intp)

        bodies, slots = [], []
        for obstacle in self._obstacles:
            body_names = _body_names(obstacle)
            if body_names is not None:
                ids = np.array([model.body(n).id for n in body_names], np.intp)
                layout.bodies[obstacle.name] = ids
            if type(obstacle).__name__ in ("Pillars", "Buttons", "Gremlins", "Vases"):
                prefix = {"Pillars": "pillar", "Buttons": "button", "Gremlins": "gremlin",
                          "Vases": "vase"}[type(obstacle).__name__]
                layout.prefix_geoms[obstacle.name] = np.array(
                    [n.startswith(prefix) for n in names], bool)
            if type(obstacle).__name__ == "Gremlins":
                layout.mocaps = np.array(
                    [model.body_mocapid[model.body(f"gremlin{i}mocap").id]
                     for i in range(obstacle.num)], np.intp)
            if obstacle.is_lidar_observed:
                start = offsets[obstacle.name + "_lidar"][0]
                if self.lidar_conf.type != "pseudo":
                    layout.slow_lidar.append((start, obstacle))
                elif body_names is not None:
                    bodies.extend(layout.bodies[obstacle.name])
                    slots.extend([len(layout.lidar_dst)] * len(body_names))
                    layout.lidar_dst.append(start)
                else:  # a constant position (Circle: the origin)
                    pos = np.array(obstacle.pos, dtype=np.float64, ndmin=2)[:, :2]
                    layout.lidar_const.extend((len(layout.lidar_dst), p) for p in pos)
                    layout.lidar_dst.append(start)
            if getattr(obstacle, "is_comp_observed", False):
                layout.compass.append((offsets[obstacle.name + "_comp"][0], obstacle))
        layout.lidar_bodies = np.asarray(bodies, np.intp)
        layout.lidar_slot = np.asarray(slots + [s for s, _ in layout.lidar_const], np.intp)
        self._group_lidar_rows(layout)
        if "buttons_lidar" in offsets:
            layout.buttons_lidar = offsets["buttons_lidar"][0]
        self._check_fast_layout(layout)
        return layout

    def _group_lidar_rows(self, layout: _Layout) -> None:
        """Rows (objects) of each lidar slot are contiguous: where each group starts, and
        where its bins go in the flat observation (empty slots read 0)."""
        nbins = self.lidar_conf.num_bins
        slot = layout.lidar_slot
        layout.lidar_rows = np.arange(len(slot), dtype=np.intp)
        starts, out = [], []
        for row, s in enumerate(slot):
            if row == 0 or s != slot[row - 1]:
                starts.append(row)
                out.extend(range(layout.lidar_dst[s], layout.lidar_dst[s] + nbins))
        layout.lidar_starts = np.asarray(starts, np.intp)
        layout.lidar_out = np.asarray(out, np.intp)
        empty = [i for i in range(len(layout.lidar_dst)) if i not in set(slot.tolist())]
        layout.lidar_empty = np.asarray(
            [j for i in empty for j in range(layout.lidar_dst[i], layout.lidar_dst[i] + nbins)],
            np.intp)

    def _check_fast_layout(self, layout: _Layout) -> None:
        """The cached body ids give what upstream's ``obstacle.pos`` gives (once per model)."""
        xpos = self.world.engine.data.xpos
        for obstacle in self._obstacles:
            ids = layout.bodies.get(obstacle.name)
            if ids is not None:
                want = np.array(obstacle.pos, dtype=np.float64, ndmin=2)
                if not np.array_equal(xpos[ids], want):
                    raise RuntimeError(f"fast navigation path: body ids of {obstacle.name!r} "
                                       "do not match safety-gymnasium's positions")

    # ------------------------------------------------------------------ observation
    def obs(self) -> dict | np.ndarray:
        """The flat observation, as upstream's ``obs`` (module doc)."""
        if not self.observation_flatten or self.observe_vision:
            return self._fast_upstream.obs(self)
        model, data = self.world.engine.model, self.world.engine.data
        if not self._fast_forwarded:  # upstream forwards here (sensors of this state)
            mujoco.mj_forward(model, data)
        self._fast_forwarded = False  # the step ends here
        layout = self._fast()
        out = np.empty(layout.size, dtype=np.float64)
        sensordata = data.sensordata
        out[layout.raw_dst] = sensordata[layout.raw_src]
        for dst, adr in layout.hinges:
            theta = float(sensordata[adr])
            out[dst:dst + 2] = (np.sin(theta), np.cos(theta))
        for dst, adr in layout.quats:
            mat = np.zeros(9, dtype=np.float64)
            mujoco.mju_quat2Mat(mat, np.array(sensordata[adr:adr + 4], dtype=np.float64))
            out[dst:dst + 9] = mat
        if layout.lidar_dst:
            self._fast_pseudo_lidar(layout, data, out)
        for dst, obstacle in layout.slow_lidar:
            out[dst:dst + self.lidar_conf.num_bins] = self._obs_lidar(
                obstacle.pos, obstacle.group)
        for dst, obstacle in layout.compass:
            out[dst:dst + self.compass_conf.shape] = self._obs_compass(obstacle.pos)
        if layout.buttons_lidar is not None and self.buttons.timer != 0:
            out[layout.buttons_lidar:layout.buttons_lidar + self.lidar_conf.num_bins] = 0.0
        return out

    def _fast_pseudo_lidar(self, layout: _Layout, data: Any, out: np.ndarray) -> None:
        """Upstream's ``_obs_lidar_pseudo`` for every lidar object at once."""
        conf = self.lidar_conf
        nbins = conf.num_bins
        xy = data.xpos[layout.lidar_bodies, :2]
        if layout.lidar_const:
            xy = np.concatenate([xy, np.array([p for _, p in layout.lidar_const])])
        agent_pos = data.xpos[layout.agent]
        mat = data.xmat[layout.agent].reshape(3, 3)
        # _ego_xy: ([x, y, 0] - agent_pos) @ agent_mat, summed as numpy's matmul does.
        w0 = xy[:, 0] - agent_pos[0]
        w1 = xy[:, 1] - agent_pos[1]
        w2 = 0.0 - agent_pos[2]
        ex = w0 * mat[0, 0] + w1 * mat[1, 0] + w2 * mat[2, 0]
        ey = w0 * mat[0, 1] + w1 * mat[1, 1] + w2 * mat[2, 1]
        # Upstream: abs() and np.angle() of complex(ex, ey). numpy's complex abs is what
        # upstream's scalar abs computes (np.hypot is not, bit for bit); np.angle is
        # arctan2(imag, real).
        z = np.empty(len(xy), dtype=_COMPLEX)
        z.real, z.imag = ex, ey
        dist = np.abs(z)
        angle = np.arctan2(ey, ex) % _TWO_PI
        bin_size = _TWO_PI / nbins
        bins = (angle / bin_size).astype(np.intp)
        if conf.max_dist is None:
            sensor = np.exp(-conf.exp_gain * dist)
        else:
            sensor = np.maximum(0, conf.max_dist - dist) / conf.max_dist
        if len(layout.lidar_empty):
            out[layout.lidar_empty] = 0.0
        if not len(xy):
            return
        if nbins >= 3:
            # One row per object: its bin and (aliasing) the two neighbours are distinct
            # bins, so they are plain writes; objects then combine by max, as upstream's
            # running ``max`` does (max is order-free, so this is exact).
            rows = layout.lidar_rows
            per_object = np.zeros((len(xy), nbins), dtype=np.float64)
            per_object[rows, bins] = sensor
            if conf.alias:
                alias = (angle - bin_size * bins) / bin_size
                per_object[rows, (bins + 1) % nbins] = alias * sensor
                per_object[rows, (bins - 1) % nbins] = (1 - alias) * sensor
            out[layout.lidar_out] = np.maximum.reduceat(
                per_object, layout.lidar_starts, axis=0).ravel()
            return
        lidar = np.zeros(len(layout.lidar_dst) * nbins, dtype=np.float64)
        base = layout.lidar_slot * nbins
        if conf.alias:
            alias = (angle - bin_size * bins) / bin_size
            index = np.concatenate([base + bins, base + (bins + 1) % nbins,
                                    base + (bins - 1) % nbins])
            value = np.concatenate([sensor, alias * sensor, (1 - alias) * sensor])
            np.maximum.at(lidar, index, value)
        else:
            np.maximum.at(lidar, base + bins, sensor)
        for i, dst in enumerate(layout.lidar_dst):
            out[dst:dst + nbins] = lidar[i * nbins:(i + 1) * nbins]

    # ------------------------------------------------------------- reward and goal
    def _fast_dist(self, name: str, dims: int) -> np.floating:
        # Upstream: sqrt(sum(square(a - b))) over 2 or 3 coordinates; numpy sums so few
        # terms left to right, so this is the same arithmetic, without numpy's overhead.
        xpos = self.world.engine.data.xpos
        layout = self._fast()
        a, b = xpos[layout.bodies[name][0]], xpos[layout.agent]
        return self._fast_norm(a, b, dims)

    @staticmethod
    def _fast_norm(a: np.ndarray, b: np.ndarray, dims: int) -> np.floating:
        dx, dy = a[0] - b[0], a[1] - b[1]
        if dims == 2:
            return np.sqrt(dx * dx + dy * dy)
        dz = a[2] - b[2]
        return np.sqrt(dx * dx + dy * dy + dz * dz)

    def dist_goal(self) -> float:
        """Upstream's ``dist_goal`` (agent to goal, XY) with cached body ids."""
        return self._fast_dist("goal", 2)

    def dist_box(self) -> float:
        """Upstream's ``PushLevel0.dist_box`` (agent to box, XYZ) with cached body ids."""
        return self._fast_dist("push_box", 3)

    def dist_box_goal(self) -> float:
        """Upstream's ``PushLevel0.dist_box_goal`` (box to goal, XYZ) with cached ids."""
        xpos = self.world.engine.data.xpos
        bodies = self._fast().bodies
        return self._fast_norm(xpos[bodies["push_box"][0]], xpos[bodies["goal"][0]], 3)

    def _fast_contacts(self, mask: np.ndarray) -> int:
        """How many contacts touch a geom of ``mask`` and a geom of the agent."""
        data = self.world.engine.data
        if data.ncon == 0:
            return 0
        contact = data.contact
        g1, g2 = contact.geom1, contact.geom2
        agent = self._fast_layout.agent_geoms
        return int(np.count_nonzero((mask[g1] | mask[g2]) & (agent[g1] | agent[g2])))

    def _fast_button_pressed(self) -> bool:
        """Upstream's ``ButtonLevel0.goal_achieved``: the agent touches the goal button."""
        layout = self._fast()
        target = f"button{self.buttons.goal_button}"
        mask = np.array([n == target for n in layout.geom_names], bool)
        return self._fast_contacts(mask) > 0

    # --------------------------------------------------------------------- cost
    def calculate_cost(self) -> dict:
        """Upstream's ``calculate_cost`` with the per-object loops vectorised."""
        if not self._fast_forwarded:  # upstream forwards here (simulation_forward did)
            mujoco.mj_forward(self.world.engine.model, self.world.engine.data)
        if self._is_load_static_geoms and self.static_geoms_contact_cost:
            return self._fast_upstream.calculate_cost(self)
        layout = self._fast()
        cost: dict = {}
        for obstacle in self._obstacles:
            kind = type(obstacle).__name__
            if kind == "Hazards":
                cost.update(self._fast_hazards_cost(obstacle, layout))
            elif kind in ("Pillars", "Gremlins"):
                cost.update(self._fast_contact_cost(obstacle, layout, kind))
            elif kind == "Buttons":
                cost.update(self._fast_buttons_cost(obstacle, layout))
            elif kind == "Vases" and not obstacle.displace_cost:
                cost.update(self._fast_vases_cost(obstacle, layout))
            else:
                cost.update(obstacle.cal_cost())
        cost["cost_sum"] = sum(v for k, v in cost.items() if k.startswith("cost_"))
        return cost

    def _fast_hazards_cost(self, hazards: Any, layout: _Layout) -> dict:
        if not hazards.is_constrained:
            return {}
        xpos = self.world.engine.data.xpos
        diff = xpos[layout.bodies[hazards.name], :2] - xpos[layout.agent, :2]
        dist = np.sqrt(np.sum(np.square(diff), axis=1))
        total = 0
        inside = dist <= hazards.size
        if inside.any():
            for i in np.flatnonzero(inside):
                total += hazards.cost * (hazards.size - dist[i])
        return {"cost_hazards": total}

    def _fast_contact_cost(self, obstacle: Any, layout: _Layout, kind: str) -> dict:
        if not obstacle.is_constrained:
            return {}
        per_contact = obstacle.cost if kind == "Pillars" else obstacle.contact_cost
        total = 0
        for _ in range(self._fast_contacts(layout.prefix_geoms[obstacle.name])):
            total += per_contact
        return {"cost_pillars" if kind == "Pillars" else "cost_gremlins": total}

    def _fast_buttons_cost(self, buttons: Any, layout: _Layout) -> dict:
        assert buttons.goal_button is not None, "goal button unknown"
        if not buttons.is_constrained or buttons.timer != 0:
            return {}
        target = f"button{buttons.goal_button}"
        mask = layout.prefix_geoms[buttons.name].copy()
        data = self.world.engine.data
        total = 0
        if data.ncon:
            g1, g2 = data.contact.geom1, data.contact.geom2
            is_goal = np.array([n == target for n in layout.geom_names], bool)
            agent = layout.agent_geoms
            hits = ((mask[g1] | mask[g2]) & (agent[g1] | agent[g2])
                    & ~(is_goal[g1] | is_goal[g2]))
            for _ in range(int(np.count_nonzero(hits))):
                total += buttons.cost
        return {"cost_buttons": total}

    def _fast_vases_cost(self, vases: Any, layout: _Layout) -> dict:
        if not vases.is_constrained:
            return {}
        cost: dict = {"cost_vases_contact": 0}
        if vases.contact_cost:
            for _ in range(self._fast_contacts(layout.prefix_geoms[vases.name])):
                cost["cost_vases_contact"] += vases.contact_cost
        if vases.velocity_cost:
            model, data = self.world.engine.model, self.world.engine.data
            total = 0
            for body in layout.bodies[vases.name]:
                jacp = np.zeros(3 * model.nv).reshape(3, model.nv)
                mujoco.mj_jacBody(model, data, jacp, None, int(body))
                vel = np.sqrt(np.sum(np.square(np.dot(jacp, data.qvel))))
                if vel >= vases.velocity_threshold:
                    total += vel * vases.velocity_cost
            cost["cost_vases_velocity"] = total
        return cost

    # ------------------------------------------------------------------ physics step
    def simulation_forward(self, action: np.ndarray) -> bool:
        """Upstream's ``simulation_forward`` (gremlins moved through cached mocap ids).

        Marks the state as forwarded: until the step's observation, nothing on the step
        path changes the state without its own ``mj_forward`` (a new goal is placed by
        ``build_goal_position``, which forwards), so the ``mj_forward`` calls at the top
        of ``calculate_cost`` and ``obs`` would recompute the same numbers (MuJoCo's
        forward is deterministic and idempotent; the exactness test covers it).
        """
        if self.debug:
            self.agent.debug()
        else:
            noise = (self.action_noise * self.random_generator.randn(self.agent.body_info.nu)
                     if self.action_noise else None)
            self.agent.apply_action(action, noise)
        gremlins = self._mocaps.get("gremlins") if len(self._mocaps) == 1 else None
        mocaps = self._fast().mocaps
        model, data = self.world.engine.model, self.world.engine.data
        steps = self.random_generator.binomial(self.sim_conf.frameskip_binom_n,
                                               self.sim_conf.frameskip_binom_p)
        if not self._mocaps and steps > 0:
            mujoco.mj_step(model, data, nstep=steps)  # the same steps, looped in C
        for _ in range(steps if self._mocaps else 0):
            if gremlins is not None:
                phase = float(data.time)
                target = np.array([np.sin(phase), np.cos(phase)]) * gremlins.travel
                data.mocap_pos[mocaps] = (target[0], target[1], gremlins.size)
            else:
                for mocap in self._mocaps.values():
                    mocap.move()
            mujoco.mj_step(model, data)
        mujoco.mj_forward(model, data)
        self._fast_forwarded = True
        return False


class _FastButtonTask(FastNavigationTask):
    @property
    def goal_achieved(self) -> bool:
        """The agent touches the goal button (upstream's test with cached geom ids)."""
        return self._fast_button_pressed()


_CLASSES: dict[type, type] = {}


def _methods(cls: type) -> dict[str, Any]:
    return {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}


def fast_class(task_class: type) -> type:
    """The fast subclass of a navigation task class (one per class, cached)."""
    if task_class not in _CLASSES:
        namespace = _methods(FastNavigationTask)
        if task_class.__name__.startswith("Button"):
            namespace.update(_methods(_FastButtonTask))
        namespace.update({
            "__doc__": f"{task_class.__name__} with rllib_kfcpo's vectorised step code.",
            "__module__": __name__, "_fast_upstream": task_class,
        })
        _CLASSES[task_class] = type(f"Fast{task_class.__name__}", (task_class,), namespace)
    return _CLASSES[task_class]


def install(env: Any) -> bool:
    """Switches a Safety-Gymnasium ``Builder``'s task to the fast path.

    Returns:
        True when installed; False (nothing changed) for a task that is not one of
        :data:`SUPPORTED_TASKS` (velocity tasks, ...), or one with vision observations.

    Raises:
        RuntimeError: the installed safety-gymnasium is not :data:`SUPPORTED_VERSION`.
    """
    ok, reason = supported()
    if not ok:
        raise RuntimeError(reason)
    task = getattr(env, "task", None)
    if task is None or _is_fast(task):
        return task is not None
    upstream = type(task)
    if upstream.__name__ not in SUPPORTED_TASKS or task.observe_vision:
        return False
    task.__class__ = fast_class(upstream)
    return True


def is_installed(env: Any) -> bool:
    """Whether ``env`` (a ``Builder`` or any wrapper of one) uses the fast path."""
    return _is_fast(getattr(getattr(env, "unwrapped", env), "task", None))


def _is_fast(task: Any) -> bool:
    return type(task) in _CLASSES.values()
