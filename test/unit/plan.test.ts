import { describe, expect, it } from 'vitest';
import { addressAddOrder, forwardNic, movableRoutes, plan, routeAddOrder, type Generated, type PlanOptions } from '../../src/plan/plan.ts';
import { chooseServerId, nicNames, primaryNic } from '../../src/plan/attachment.ts';
import { chooseDatapath } from '../../src/plan/datapath/index.ts';
import { ipLines, type Action, type Step } from '../../src/journal/actions.ts';
import { execute, undoSteps, type Effects } from '../../src/journal/apply.ts';
import { renderTable, type NftTable } from '../../src/plan/guard.ts';
import { PodtapError } from '../../src/errors.ts';
import type { Link, Pod, PodInterface, Route } from '../../src/pod/model.ts';
import { ALL_SHAPES, MULTUS, SHAPES, linksOf, podInterface, podOf } from '../helpers/shapes.ts';
import { ModelKernel } from '../helpers/unit-kernel.ts';

const OPTS: PlanOptions = { bridge: 'br0', tap: 'tap0', queues: 1, linkLocal: '169.254.75.1/32', linkLocalExplicit: false, antispoof: true, persistTap: false, support: { redirect: true } };
const BRIDGE: PlanOptions = { ...OPTS, datapath: 'bridge' };
const REDIRECT: PlanOptions = { ...OPTS, datapath: 'redirect' };
const GEN = (nic: number): Generated => ({ serverMac: `02:aa:00:00:0${nic}:01`, portMac: `02:aa:00:00:0${nic}:02`, bridgeMac: `02:aa:00:00:0${nic}:03` });
const log = () => {};

/** Multus without its macvlan: every NIC can take the bridge path. */
const MULTUS_VETHS: Pod = { ...MULTUS, interfaces: MULTUS.interfaces.filter((i) => i.link.kind !== 'macvlan') };
/** The CNI bridge shape with its interface administratively down. */
const DOWN: Pod = podOf({ ...SHAPES.bridge.interfaces[0]!, link: { ...SHAPES.bridge.interfaces[0]!.link, up: false } });

const CASES: [string, Pod, PlanOptions][] = [
  ...Object.entries(SHAPES).flatMap(([name, pod]): [string, Pod, PlanOptions][] => [
    [`${name}/bridge`, pod, BRIDGE],
    [`${name}/redirect`, pod, REDIRECT],
  ]),
  ['multus/redirect', MULTUS, REDIRECT],
  ['multus-veths/bridge', MULTUS_VETHS, BRIDGE],
  ['bridge-down/bridge', DOWN, BRIDGE],
  ['bridge-down/redirect', DOWN, REDIRECT],
  ['ptp/bridge --forward-port', SHAPES.ptp, { ...BRIDGE, forwardPorts: [{ port: 8080, proto: 'tcp' }] }],
  ['multus/redirect --forward-port', MULTUS, { ...REDIRECT, forwardPorts: [{ port: 8080, proto: 'tcp' }, { port: 53, proto: 'udp' }] }],
];

const doActions = (steps: Step[]) => steps.flatMap((s) => s.do);
/** The undo actions in the order teardown runs them: last step first. */
const undoActions = (steps: Step[]) => [...steps].reverse().flatMap((s) => s.undo);
const lines = (actions: Action[]) => actions.flatMap((a) => ipLines(a) ?? []);
const stepOf = (steps: Step[], id: string) => {
  const s = steps.find((x) => x.id === id);
  if (!s) throw new Error(`no step ${id} in ${steps.map((x) => x.id).join(' ')}`);
  return s;
};

async function setUp(pod: Pod, opts: PlanOptions) {
  const k = ModelKernel.of(pod);
  const before = k.snapshot();
  const p = plan(pod, linksOf(pod), opts, GEN);
  const fds: number[] = [];
  await execute(p.steps, k.runtime(p.steps), fds);
  return { k, p, before, fds };
}

describe('plan: taking every pod interface over and giving it back', () => {
  for (const [name, pod, opts] of CASES) {
    it(`${name}: a step removes each movable route, address and permanent neighbour, and its undo puts exactly that back`, () => {
      const p = plan(pod, linksOf(pod), opts, GEN);
      for (const iface of pod.interfaces) {
        const dev = iface.link.name;
        for (const route of movableRoutes(iface.routes)) {
          const s = p.steps.find((x) => x.do.some((a) => a.op === 'route-del' && a.route === route));
          expect(s, `route-del step for ${dev} ${route.dst}`).toBeDefined();
          expect(s!.undo).toEqual([{ op: 'route-add', route }]);
        }
        for (const addr of iface.addresses) {
          const s = p.steps.find((x) => x.do.some((a) => a.op === 'addr-del' && a.addr === addr && a.dev === dev));
          expect(s, `addr-del step for ${dev} ${addr.local}`).toBeDefined();
          expect(s!.undo[0]).toEqual({ op: 'addr-add', dev, addr });
        }
        for (const neigh of iface.neighbours) {
          const s = p.steps.find((x) => x.do.some((a) => a.op === 'neigh-del' && a.neigh === neigh));
          // Learned entries are read for their MAC only; permanent ones are state.
          if (!neigh.permanent) expect(s).toBeUndefined();
          else expect(s!.undo).toEqual([{ op: 'neigh-add', neigh }]);
        }
        // The kernel's own routes stay where they are.
        for (const r of iface.routes.filter((x) => !movableRoutes([x]).length)) {
          expect(doActions(p.steps).some((a) => a.op === 'route-del' && a.route === r)).toBe(false);
        }
      }
    });

    it(`${name}: on a model kernel, set-up leaves nothing of the pod's layer 3 on its interfaces, and undo restores the namespace exactly, twice`, async () => {
      const { k, p, before } = await setUp(pod, opts);
      for (const iface of pod.interfaces) expect(k.on(iface.link.name)).toEqual({ addresses: [], routes: [], neighbours: [] });
      for (const a of p.attachments) {
        expect(k.link(a.tap)).toMatchObject({ kind: 'tun', up: true, mtu: a.mtu });
        if (a.datapath === 'bridge') expect(k.link(a.bridge!)).toMatchObject({ kind: 'bridge', up: true, mac: a.bridgeMac, mtu: a.mtu });
      }
      const first = await undoSteps(p.steps, { log, effects: k.effects(p.steps) });
      expect(first.failures).toEqual([]);
      expect(k.snapshot()).toEqual(before);
      const again = await undoSteps(p.steps, { log, effects: k.effects(p.steps) });
      expect(again.failures).toEqual([]);
      expect(k.snapshot()).toEqual(before);
    });

    it(`${name}: a crash after any step is undone exactly from the journal (which holds every step)`, async () => {
      const p = plan(pod, linksOf(pod), opts, GEN);
      for (let n = 0; n <= p.steps.length; n++) {
        const k = ModelKernel.of(pod);
        const before = k.snapshot();
        await execute(p.steps.slice(0, n), k.runtime(p.steps), []);
        const r = await undoSteps(p.steps, { log, effects: k.effects(p.steps) });
        expect(r.failures, `crash after ${n} steps`).toEqual([]);
        expect(k.snapshot(), `crash after ${n} steps`).toEqual(before);
      }
    });
  }

  it('takes an interface without IPv4 (IPv6 only, or layer 2 only) over: nothing to hand out by DHCPv4', () => {
    const v6only = podOf({ ...SHAPES.dualstack.interfaces[0]!, addresses: SHAPES.dualstack.interfaces[0]!.addresses.filter((a) => a.family === 'inet6') });
    const p = plan(v6only, linksOf(v6only), OPTS, GEN);
    expect(p.attachments[0]!.ipv4).toBeUndefined();
    expect(p.attachments[0]!.ipv6?.addresses).toEqual(['fd00:24::5']);
    const l2 = plan(MULTUS, linksOf(MULTUS), OPTS, GEN).attachments[3]!;
    expect(l2).toMatchObject({ interface: 'net3', primary: false });
    expect(l2.ipv4).toBeUndefined();
    expect(l2.ipv6).toBeUndefined();
  });
});

describe('bridge data path', () => {
  for (const [name, pod, opts] of CASES.filter(([, , o]) => o.datapath === 'bridge')) {
    const ipv6 = pod.interfaces.map((i) => i.sysctls[`net/ipv6/conf/${i.link.name}/disable_ipv6`] === '0');
    it(`${name} (IPv6 ${ipv6.map((x) => (x ? 'on' : 'off')).join('/')}): the pod interface wears the generated MAC, the VM the original, and undo gives it back`, async () => {
      const { k, p } = await setUp(pod, opts);
      for (const a of p.attachments) {
        const original = pod.interfaces[a.nic]!.link.mac;
        expect(a.mac).toBe(original);
        expect(a.portMac).toBe(GEN(a.nic).portMac);
        const s = p.steps.find((x) => x.do.some((d) => d.op === 'link-set' && d.name === a.interface && d.mac !== undefined))!;
        expect(s.do).toEqual([{ op: 'link-set', name: a.interface, mac: a.portMac }]);
        expect(s.undo).toEqual([{ op: 'link-set', name: a.interface, mac: original }]);
        expect(k.link(a.interface).mac).toBe(a.portMac);
      }
      await undoSteps(p.steps, { log, effects: k.effects(p.steps) });
      for (const a of p.attachments) expect(k.link(a.interface).mac).toBe(pod.interfaces[a.nic]!.link.mac);
    });
  }

  it('changes the MAC before the interface joins the bridge, so the bridge never sees the VM\'s MAC on two ports', () => {
    const p = plan(SHAPES.ptp, linksOf(SHAPES.ptp), BRIDGE, GEN);
    const ids = p.steps.map((s) => s.id);
    expect(ids.indexOf('nic0/port-mac')).toBeLessThan(ids.indexOf('nic0/port-enslave'));
    expect(ids.indexOf('nic0/bridge-add')).toBeLessThan(ids.indexOf('nic0/port-enslave'));
  });

  it('turns learning off on the pod port (never on the tap), and the model kernel shows it after set-up', async () => {
    const { k, p } = await setUp(MULTUS_VETHS, BRIDGE);
    for (const a of p.attachments) {
      const enslave = stepOf(p.steps, `nic${a.nic}/port-enslave`);
      expect(enslave.do).toEqual([
        { op: 'link-set', name: a.interface, master: a.bridge },
        { op: 'port-set', name: a.interface, learning: false },
      ]);
      expect(enslave.undo).toEqual([{ op: 'link-set', name: a.interface, master: null }]);
      expect(k.link(a.interface)).toMatchObject({ master: a.bridge, learning: false });
      expect(k.link(a.tap)).toMatchObject({ master: a.bridge, learning: true });
    }
    expect(doActions(p.steps).filter((a) => a.op === 'port-set')).toHaveLength(p.attachments.length);
  });

  it('creates the bridge with its generated MAC and the pod MTU, deletes it on undo, and brings the tap up on it with address generation off first', () => {
    const p = plan(SHAPES.jumbo, linksOf(SHAPES.jumbo), BRIDGE, GEN);
    expect(stepOf(p.steps, 'nic0/bridge-add')).toEqual({ id: 'nic0/bridge-add', do: [{ op: 'bridge-add', name: 'br0', mac: GEN(0).bridgeMac, mtu: 9000 }], undo: [{ op: 'link-del', name: 'br0' }] });
    expect(stepOf(p.steps, 'nic0/tap-up').do).toEqual([
      { op: 'link-set', name: 'tap0', addrGenMode: 'none' },
      { op: 'link-set', name: 'tap0', mtu: 9000, master: 'br0', up: true },
    ]);
    expect(stepOf(p.steps, 'nic0/bridge-up').do).toEqual([{ op: 'link-set', name: 'br0', up: true }]);
    expect(p.attachments[0]).toMatchObject({ datapath: 'bridge', bridge: 'br0', bridgeMac: GEN(0).bridgeMac, tap: 'tap0' });
  });

  it('brings a pod interface that was down up, and down again on undo; leaves one that was up alone (both data paths)', () => {
    for (const opts of [BRIDGE, REDIRECT]) {
      const p = plan(DOWN, linksOf(DOWN), opts, GEN);
      expect(stepOf(p.steps, 'nic0/port-up')).toMatchObject({ do: [{ op: 'link-set', name: 'eth0', up: true }], undo: [{ op: 'link-set', name: 'eth0', up: false }] });
      expect(plan(SHAPES.bridge, linksOf(SHAPES.bridge), opts, GEN).steps.some((s) => s.id === 'nic0/port-up')).toBe(false);
    }
  });
});

describe('redirect data path', () => {
  it('changes no MAC, makes no bridge and enslaves nothing; the tap comes up alone with address generation off first', async () => {
    const { k, p } = await setUp(MULTUS, REDIRECT);
    const acts = doActions(p.steps);
    expect(acts.some((a) => a.op === 'bridge-add' || a.op === 'port-set')).toBe(false);
    expect(acts.some((a) => a.op === 'link-set' && (a.mac !== undefined || a.master !== undefined))).toBe(false);
    for (const a of p.attachments) {
      expect(a.datapath).toBe('redirect');
      expect(a.bridge).toBeUndefined();
      expect(a.portMac).toBeUndefined();
      expect(stepOf(p.steps, `nic${a.nic}/tap-up`).do).toEqual([
        { op: 'link-set', name: a.tap, addrGenMode: 'none' },
        { op: 'link-set', name: a.tap, mtu: a.mtu, up: true },
      ]);
      expect(k.link(a.interface).mac).toBe(MULTUS.interfaces[a.nic]!.link.mac);
      expect(k.link(a.interface).master).toBeUndefined();
    }
    expect([...k.links.values()].some((l) => l.kind === 'bridge')).toBe(false);
    expect([...k.nft.keys()]).toEqual(['netdev']);
  });

  it('is chosen for a macvlan by default, refuses the bridge path for it, and needs nftables fwd', () => {
    const macvlan = MULTUS.interfaces[2]!.link;
    const veth = MULTUS.interfaces[0]!.link;
    expect(chooseDatapath(macvlan, undefined, { redirect: true })).toBe('redirect');
    expect(chooseDatapath(veth, undefined, { redirect: true })).toBe('redirect');
    // Without netdev fwd a veth falls back to the bridge; a macvlan can't.
    expect(chooseDatapath(veth, undefined, { redirect: false })).toBe('bridge');
    expect(chooseDatapath(veth, 'bridge', { redirect: true })).toBe('bridge');
    const refusal = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return e as PodtapError;
      }
      throw new Error('not refused');
    };
    const bridged = refusal(() => chooseDatapath(macvlan, 'bridge', { redirect: true }));
    expect(bridged).toBeInstanceOf(PodtapError);
    expect(bridged.code).toBe('usage');
    expect(bridged.message).toMatch(/net2 is a macvlan interface/);
    expect(bridged.hint).toMatch(/--datapath redirect/);
    expect(refusal(() => chooseDatapath(macvlan, undefined, { redirect: false })).message).toMatch(/only one that carries the macvlan net2/);
    expect(refusal(() => chooseDatapath(veth, 'redirect', { redirect: false })).code).toBe('environment');
    // The same through plan: one macvlan among the interfaces refuses --datapath bridge.
    expect(() => plan(MULTUS, linksOf(MULTUS), BRIDGE, GEN)).toThrow(/net2 is a macvlan/);
    expect(plan(MULTUS, linksOf(MULTUS), OPTS, GEN).attachments.map((a) => a.datapath)).toEqual(['redirect', 'redirect', 'redirect', 'redirect']);
  });
});

describe('NICs', () => {
  it('names each NIC\'s devices: NIC 0 as given, the others counting on', () => {
    expect(plan(MULTUS, linksOf(MULTUS), OPTS, GEN).attachments.map((a) => [a.interface, a.tap, a.bridge])).toEqual([
      ['eth0', 'tap0', undefined],
      ['net1', 'tap1', undefined],
      ['net2', 'tap2', undefined],
      ['net3', 'tap3', undefined],
    ]);
    expect(plan(MULTUS_VETHS, linksOf(MULTUS_VETHS), BRIDGE, GEN).attachments.map((a) => [a.interface, a.bridge, a.tap])).toEqual([
      ['eth0', 'br0', 'tap0'],
      ['net1', 'br1', 'tap1'],
      ['net3', 'br2', 'tap2'],
    ]);
    expect([0, 1, 2].map((i) => nicNames(i, { bridge: 'vmbr', tap: 'vmtap9' }))).toEqual([
      { bridge: 'vmbr', tap: 'vmtap9' },
      { bridge: 'vmbr1', tap: 'vmtap10' },
      { bridge: 'vmbr2', tap: 'vmtap11' },
    ]);
    const p = plan(MULTUS, linksOf(MULTUS), { ...OPTS, tap: 'vm' }, GEN);
    expect(p.attachments.map((a) => a.tap)).toEqual(['vm', 'vm1', 'vm2', 'vm3']);
    expect(p.steps.filter((s) => s.id.endsWith('/tap-open')).map((s) => s.do[0])).toEqual(
      ['vm', 'vm1', 'vm2', 'vm3'].map((name) => ({ op: 'tap-open', tap: { name, queues: 1, persist: false } })),
    );
  });

  it('refuses device names that one NIC would take from another or from a pod interface', () => {
    expect(() => plan(MULTUS_VETHS, linksOf(MULTUS_VETHS), { ...BRIDGE, bridge: 'tap1' }, GEN)).toThrow(/device name tap1 for NIC 1 \(net1\) is already used/);
    // NIC 1's tap would be "net1", a pod interface.
    expect(() => plan(MULTUS, linksOf(MULTUS), { ...OPTS, tap: 'net0' }, GEN)).toThrow(/net1/);
  });

  it('makes exactly one NIC primary: the one with the pod\'s default route; only it gets the IPv4 gateway', () => {
    const p = plan(MULTUS, linksOf(MULTUS), OPTS, GEN);
    expect(p.attachments.map((a) => a.primary)).toEqual([true, false, false, false]);
    expect(p.attachments[0]!.ipv4).toEqual({ address: '10.22.0.5', prefixlen: 32, gateway: '10.22.0.1' });
    expect(p.attachments[1]!.ipv4).toEqual({ address: '10.30.0.5', prefixlen: 24 });
    expect(p.attachments[2]!.ipv4).toEqual({ address: '192.168.50.10', prefixlen: 24 });
    // A secondary network's IPv6 router is the next hop of its own routes.
    expect(p.attachments[2]!.ipv6).toEqual({ addresses: ['2001:db8:50::10'], gateway: '2001:db8:50::1', router: 'fe80::1' });
    expect(p.attachments.map((a) => a.serverMac)).toEqual([0, 1, 2, 3].map((n) => GEN(n).serverMac));
    expect(p.attachments.map((a) => a.mac)).toEqual(MULTUS.interfaces.map((i) => i.link.mac));
  });

  it('picks the primary NIC by the lowest metric of the default routes, IPv4 first; none without a default route', () => {
    const withDefault = (i: PodInterface, metric: number, family: 'inet' | 'inet6' = 'inet'): PodInterface => ({
      ...i,
      routes: [...i.routes, { family, table: 'main', type: 'unicast', dst: 'default', gateway: family === 'inet' ? '10.30.0.1' : 'fe80::1', dev: i.link.name, metric, flags: [] }],
    });
    const [eth0, net1] = MULTUS.interfaces as [PodInterface, PodInterface];
    const eth0At = (metric: number): PodInterface => ({ ...eth0, routes: eth0.routes.map((r) => (r.dst === 'default' ? { ...r, metric } : r)) });
    expect(primaryNic([eth0At(100), withDefault(net1, 50)])).toBe(1);
    expect(primaryNic([eth0At(100), withDefault(net1, 100)])).toBe(0);
    expect(primaryNic([withDefault(net1, 10, 'inet6'), eth0At(500)])).toBe(1);
    const noDefault = (i: PodInterface): PodInterface => ({ ...i, routes: i.routes.filter((r) => r.dst !== 'default') });
    expect(primaryNic([noDefault(eth0), net1])).toBeUndefined();
    expect(primaryNic([noDefault(eth0), withDefault(net1, 0, 'inet6')])).toBe(1);
    const p = plan(podOf(noDefault(eth0), net1), linksOf(podOf(noDefault(eth0), net1)), OPTS, GEN);
    expect(p.attachments.filter((a) => a.primary)).toEqual([]);
  });
});

describe('IPv6 address generation', () => {
  it('is turned off first on each interface that generates addresses, and put back by the last undo of that interface', () => {
    const p = plan(MULTUS, linksOf(MULTUS), OPTS, GEN);
    for (const iface of MULTUS.interfaces) {
      const n = MULTUS.interfaces.indexOf(iface);
      const s = stepOf(p.steps, `nic${n}/ipv6-quiet`);
      expect(s.do).toEqual([{ op: 'link-set', name: iface.link.name, addrGenMode: 'none' }]);
      expect(s.undo).toEqual([{ op: 'link-set', name: iface.link.name, addrGenMode: 'eui64' }]);
      const own = p.steps.filter((x) => x.id.startsWith(`nic${n}/`) && x.id !== `nic${n}/tap-open`);
      // First of the interface's strip steps, before any address goes.
      expect(own.filter((x) => /route-del|addr-del|neigh-del/.test(x.id)).every((x) => p.steps.indexOf(x) > p.steps.indexOf(s))).toBe(true);
      // So on undo it comes after every address of the interface is back.
      const undo = undoActions(p.steps);
      const modeBack = undo.findIndex((a) => a.op === 'link-set' && a.name === iface.link.name && a.addrGenMode === 'eui64');
      const lastAddr = undo.findLastIndex((a) => a.op === 'addr-add' && a.dev === iface.link.name);
      expect(modeBack).toBeGreaterThan(lastAddr);
    }
  });

  it('restores the mode the interface had (stable_secret, random), and adds no step when generation is already off or unknown', () => {
    for (const mode of ['stable_secret', 'random']) {
      const i = SHAPES.dualstack.interfaces[0]!;
      const pod = podOf({ ...i, link: { ...i.link, addrGenMode: mode } });
      expect(stepOf(plan(pod, linksOf(pod), OPTS, GEN).steps, 'nic0/ipv6-quiet').undo).toEqual([{ op: 'link-set', name: 'eth0', addrGenMode: mode }]);
    }
    for (const mode of ['none', undefined]) {
      const i = SHAPES.jumbo.interfaces[0]!;
      const pod = podOf({ ...i, link: { ...i.link, ...(mode ? { addrGenMode: mode } : {}) } });
      expect(plan(pod, linksOf(pod), OPTS, GEN).steps.some((s) => s.id.includes('ipv6-quiet'))).toBe(false);
    }
  });

  it('no longer writes disable_ipv6 or any sysctl: every action is a typed netlink, tap or nft action', () => {
    for (const [, pod, opts] of CASES) {
      const p = plan(pod, linksOf(pod), opts, GEN);
      for (const a of [...doActions(p.steps), ...undoActions(p.steps)]) {
        expect(['tap-open', 'bridge-add', 'link-del', 'link-set', 'port-set', 'addr-add', 'addr-del', 'route-add', 'route-del', 'neigh-add', 'neigh-del', 'nft-load', 'nft-delete']).toContain(a.op);
      }
    }
  });
});

describe('undo order', () => {
  it('puts every address back before any route of the same interface', () => {
    for (const [name, pod, opts] of CASES) {
      const undo = undoActions(plan(pod, linksOf(pod), opts, GEN).steps);
      for (const iface of pod.interfaces) {
        const dev = iface.link.name;
        const lastAddr = undo.findLastIndex((a) => a.op === 'addr-add' && a.dev === dev);
        const firstRoute = undo.findIndex((a) => a.op === 'route-add' && a.route.dev === dev);
        if (lastAddr >= 0 && firstRoute >= 0) expect(lastAddr, `${name} ${dev}`).toBeLessThan(firstRoute);
      }
    }
  });

  it('restores on-link routes before the gateway routes that need them, and those before the default route (Calico)', () => {
    const undo = lines(undoActions(plan(SHAPES.calico, linksOf(SHAPES.calico), OPTS, GEN).steps));
    const addr = undo.findIndex((l) => l.startsWith('addr replace 10.23.5.7/32 '));
    const onlink = undo.findIndex((l) => l.startsWith('route replace 169.254.1.1 dev eth0'));
    const dflt = undo.findIndex((l) => l.startsWith('route replace default via 169.254.1.1 dev eth0'));
    expect(addr).toBeGreaterThanOrEqual(0);
    expect(addr).toBeLessThan(onlink);
    expect(onlink).toBeLessThan(dflt);
    expect(routeAddOrder(SHAPES.jumbo.interfaces[0]!.routes.filter((r) => r.table === 'main')).map((r) => r.dst)).toEqual(['10.26.0.0/24', '10.77.0.0/16', 'default']);
  });

  it('removes the kernel prefix route that re-adding an address creates when the pod did not have it (CNI ptp), before the routes go back', () => {
    const undo = lines(undoActions(plan(SHAPES.ptp, linksOf(SHAPES.ptp), OPTS, GEN).steps));
    const readd = undo.findIndex((l) => l.startsWith('addr replace 10.22.0.5/16 '));
    const stray = undo.indexOf('route del 10.22.0.0/16 dev eth0 table main proto kernel scope link');
    const host = undo.findIndex((l) => l.startsWith('route replace 10.22.0.1 dev eth0'));
    const via = undo.findIndex((l) => l.startsWith('route replace 10.22.0.0/16 via 10.22.0.1 dev eth0'));
    expect(readd).toBeGreaterThanOrEqual(0);
    expect(readd).toBeLessThan(stray);
    expect(stray).toBeLessThan(host);
    expect(host).toBeLessThan(via);
    // The bridge shape keeps its kernel route, so nothing is deleted there.
    expect(lines(undoActions(plan(SHAPES.bridge, linksOf(SHAPES.bridge), OPTS, GEN).steps)).some((l) => l.startsWith('route del'))).toBe(false);
  });

  it('removes a stray IPv6 prefix route too (metric 256, as the kernel makes it), but never for a link-local address', () => {
    const i = SHAPES.dualstack.interfaces[0]!;
    const pod = podOf({ ...i, routes: i.routes.filter((r) => r.dst !== 'fd00:24::/64') });
    const undo = lines(undoActions(plan(pod, linksOf(pod), OPTS, GEN).steps));
    expect(undo).toContain('route del fd00:24::/64 dev eth0 table main proto kernel metric 256');
    expect(undo.some((l) => l.startsWith('route del fe80::'))).toBe(false);
  });

  it('re-adds a primary address before its secondary, and a permanent neighbour as permanent', () => {
    const undo = lines(undoActions(plan(SHAPES.jumbo, linksOf(SHAPES.jumbo), OPTS, GEN).steps));
    expect(undo.findIndex((l) => l.startsWith('addr replace 10.26.0.5/24'))).toBeLessThan(undo.findIndex((l) => l.startsWith('addr replace 10.26.0.6/24')));
    expect(undo.some((l) => l.startsWith('route replace 10.77.0.0/16 via 10.26.0.1') && l.includes('metric 300'))).toBe(true);
    expect(undo).toContain('neigh replace 10.26.0.9 lladdr 02:00:00:00:00:09 dev eth0 nud permanent');
    expect(addressAddOrder(SHAPES.jumbo.interfaces[0]!.addresses).map((a) => a.local)).toEqual(['10.26.0.5', '10.26.0.6']);
  });

  it('moves neither the local table, nor the kernel\'s IPv6 link-local prefix route, nor routes that expire', () => {
    const r = (x: Partial<Route> & { dst: string }): Route => ({ family: 'inet', table: 'main', type: 'unicast', dev: 'eth0', flags: [], ...x });
    const routes = [
      r({ dst: '10.0.0.0/24' }),
      r({ dst: '10.0.0.5', table: 'local', type: 'local' }),
      r({ family: 'inet6', dst: 'fe80::/64', protocol: 'kernel', metric: 256 }),
      r({ family: 'inet6', dst: 'fe80::/64', protocol: 'static', metric: 1 }),
      r({ family: 'inet6', dst: 'default', gateway: 'fe80::1', protocol: 'ra', expires: 1790 }),
    ];
    expect(movableRoutes(routes)).toEqual([routes[0], routes[3]]);
  });
});

describe('taps', () => {
  it('opens every tap first, with --queues, --tap-owner and --persist-tap, and deletes it on undo', () => {
    const p = plan(MULTUS, linksOf(MULTUS), { ...OPTS, queues: 4, tapOwner: { uid: 107, gid: 108 } }, GEN);
    expect(p.steps.slice(0, 4).map((s) => s.id)).toEqual(['nic0/tap-open', 'nic1/tap-open', 'nic2/tap-open', 'nic3/tap-open']);
    expect(p.steps[1]).toEqual({ id: 'nic1/tap-open', do: [{ op: 'tap-open', tap: { name: 'tap1', queues: 4, persist: false, owner: { uid: 107, gid: 108 } } }], undo: [{ op: 'link-del', name: 'tap1' }] });
    const persistent = plan(SHAPES.ptp, linksOf(SHAPES.ptp), { ...OPTS, persistTap: true }, GEN);
    expect(persistent.steps[0]!.do).toEqual([{ op: 'tap-open', tap: { name: 'tap0', queues: 1, persist: true } }]);
  });

  it('sends every link change of set-up to the kernel in one ip batch, after the taps are open', async () => {
    for (const [name, pod, opts] of CASES) {
      const k = ModelKernel.of(pod);
      const p = plan(pod, linksOf(pod), opts, GEN);
      const rt = k.runtime(p.steps);
      const inner = rt.effects!;
      const calls: string[] = [];
      const fx: Effects = { ...inner, ipBatch: (l, o) => (calls.push(`ip ${l.length}`), inner.ipBatch(l, o)), nft: (s) => (calls.push('nft'), inner.nft(s)) };
      let taps = 0;
      await execute(p.steps, { ...rt, effects: fx, openTap: (spec) => (calls.push(`tap ${taps++}`), rt.openTap(spec)) }, []);
      const kinds = calls.map((c) => c.split(' ')[0]);
      expect(kinds.filter((c) => c === 'ip'), name).toHaveLength(1);
      expect(kinds.slice(0, pod.interfaces.length), name).toEqual(pod.interfaces.map(() => 'tap'));
      expect(kinds.lastIndexOf('tap'), name).toBeLessThan(kinds.indexOf('ip'));
    }
  });
});

describe('guard steps', () => {
  it('come last, in the background, one table per family in use, deleted on undo', () => {
    const b = plan(SHAPES.ptp, linksOf(SHAPES.ptp), BRIDGE, GEN);
    expect(b.steps.at(-1)).toMatchObject({ id: 'guard/bridge', background: true, undo: [{ op: 'nft-delete', family: 'bridge', name: 'podtap' }] });
    expect(b.steps.filter((s) => s.id.startsWith('guard/'))).toHaveLength(1);
    const r = plan(MULTUS, linksOf(MULTUS), OPTS, GEN);
    expect(r.steps.at(-1)).toMatchObject({ id: 'guard/netdev', background: true, undo: [{ op: 'nft-delete', family: 'netdev', name: 'podtap' }] });
    const table = (r.steps.at(-1)!.do[0] as { table: NftTable }).table;
    expect(table.nics.map((g) => [g.nic, g.podIf, g.tap, g.bridge])).toEqual([
      [0, 'eth0', 'tap0', undefined],
      [1, 'net1', 'tap1', undefined],
      [2, 'net2', 'tap2', undefined],
      [3, 'net3', 'tap3', undefined],
    ]);
    expect(r.steps.filter((s) => s.background).map((s) => s.id)).toEqual(['guard/netdev']);
  });

  it('allows every IPv4 address of the interface and its global IPv6 ones, unless antispoof is off', () => {
    const p = plan(SHAPES.jumbo, linksOf(SHAPES.jumbo), BRIDGE, GEN);
    const table = (stepOf(p.steps, 'guard/bridge').do[0] as { table: NftTable }).table;
    expect(table.nics[0]).toMatchObject({ vmMac: '0a:58:0a:1a:00:05', antispoof: true, ipv4: ['10.26.0.5', '10.26.0.6'], ipv6: [], bridge: 'br0' });
    expect(renderTable(table)).toContain('ip saddr != { 10.26.0.5, 10.26.0.6 } counter drop comment "spoofed-ipv4"');
    const open = plan(SHAPES.jumbo, linksOf(SHAPES.jumbo), { ...BRIDGE, antispoof: false }, GEN);
    const openTable = (stepOf(open.steps, 'guard/bridge').do[0] as { table: NftTable }).table;
    expect(openTable.nics[0]!.antispoof).toBe(false);
    expect(renderTable(openTable)).not.toContain('saddr !=');
    const dual = plan(SHAPES.dualstack, linksOf(SHAPES.dualstack), OPTS, GEN);
    expect((stepOf(dual.steps, 'guard/netdev').do[0] as { table: NftTable }).table.nics[0]).toMatchObject({ ipv4: ['10.24.0.5'], ipv6: ['fd00:24::5'] });
  });

  it('reserves the router address: podtap\'s own for a global gateway (and answers for it), the gateway itself when it is link-local', () => {
    const dual = plan(SHAPES.dualstack, linksOf(SHAPES.dualstack), OPTS, GEN);
    expect(dual.attachments[0]!.ipv6).toEqual({ addresses: ['fd00:24::5'], gateway: 'fd00:24::1', router: 'fe80::1', routerMac: '0a:58:0a:18:00:01' });
    expect((stepOf(dual.steps, 'guard/netdev').do[0] as { table: NftTable }).table.nics[0]).toMatchObject({ reservedLinkLocal: ['fe80::1'], ndProxy: 'fe80::1' });

    const gw = 'fe80::ecee:eeff:feee:eeee';
    const calico6 = podOf(
      podInterface({
        mac: 'ee:ee:ee:0a:17:07',
        mtu: 1480,
        ipv6: true,
        addrGenMode: 'eui64',
        addresses: [{ family: 'inet6', local: 'fd00:23::7', prefixlen: 128, scope: 'global', flags: ['nodad'] }],
        routes: (r) => [r({ family: 'inet6', dst: 'default', gateway: gw, protocol: 'boot', metric: 1024, pref: 'medium' })],
        neighbours: [{ family: 'inet6', dst: gw, lladdr: 'ee:ee:ee:ee:ee:ee', router: true, proxy: false, permanent: false }],
      }),
    );
    const c = plan(calico6, linksOf(calico6), OPTS, GEN);
    expect(c.attachments[0]!.ipv6).toEqual({ addresses: ['fd00:23::7'], gateway: gw, router: gw, routerMac: 'ee:ee:ee:ee:ee:ee' });
    const g = (stepOf(c.steps, 'guard/netdev').do[0] as { table: NftTable }).table.nics[0]!;
    expect(g.reservedLinkLocal).toEqual([gw]);
    expect(g.ndProxy).toBeUndefined();
  });
});

describe('refusals and the server identifier', () => {
  it('refuses an enslaved interface, a name that exists, an unreadable IPv6 address, and no interface at all', () => {
    const i = SHAPES.ptp.interfaces[0]!;
    const enslaved = podOf({ ...i, link: { ...i.link, master: 'br9' } });
    expect(() => plan(enslaved, linksOf(enslaved), OPTS, GEN)).toThrow(/already a port of br9/);
    const taken: Link[] = [...linksOf(SHAPES.ptp), { name: 'br0', ifindex: 9, kind: 'bridge', mac: '02:00:00:00:00:09', mtu: 1500, up: true }];
    expect(() => plan(SHAPES.ptp, taken, BRIDGE, GEN)).toThrow(PodtapError);
    expect(() => plan(SHAPES.ptp, taken, BRIDGE, GEN)).toThrow(/a link named br0 already exists/);
    // The redirect path needs no bridge, so br0 is in nobody's way.
    expect(plan(SHAPES.ptp, taken, REDIRECT, GEN).attachments[0]!.tap).toBe('tap0');
    const tapTaken: Link[] = [...linksOf(SHAPES.ptp), { name: 'tap0', ifindex: 9, kind: 'tun', mac: '02:00:00:00:00:09', mtu: 1500, up: true }];
    expect(() => plan(SHAPES.ptp, tapTaken, REDIRECT, GEN)).toThrow(/a link named tap0 already exists/);
    const odd = podOf({ ...i, addresses: [...i.addresses, { family: 'inet6', local: 'fd00::zz', prefixlen: 64, scope: 'global', flags: [] }] });
    expect(() => plan(odd, linksOf(odd), OPTS, GEN)).toThrow(/IPv6 address podtap cannot read/);
    expect(() => plan(podOf(), [], OPTS, GEN)).toThrow(/no pod interface/);
  });

  it('moves the default server identifier out of the way of every interface, but refuses a clashing explicit one', () => {
    const clash = (dev: PodInterface): PodInterface => ({ ...dev, routes: [...dev.routes, { family: 'inet', table: 'main', type: 'unicast', dst: '169.254.75.0/24', dev: dev.link.name, flags: [], scope: 'link' }] });
    const calico = [clash(SHAPES.calico.interfaces[0]!)];
    expect(chooseServerId(calico, { linkLocal: '169.254.75.1/32', linkLocalExplicit: false })).toBe('169.254.76.1/32');
    expect(() => chooseServerId(calico, { linkLocal: '169.254.75.1/32', linkLocalExplicit: true })).toThrow(/overlaps/);
    // A clash on a secondary network counts as much as one on the primary.
    const multus = MULTUS.interfaces.map((x) => (x.link.name === 'net1' ? clash(x) : x));
    expect(chooseServerId(multus, { linkLocal: '169.254.75.1/32', linkLocalExplicit: false })).toBe('169.254.76.1/32');
    expect(chooseServerId(MULTUS.interfaces, { linkLocal: '169.254.75.1/32', linkLocalExplicit: false })).toBe('169.254.75.1/32');
    expect(plan(MULTUS, linksOf(MULTUS), OPTS, GEN).serverId).toBe('169.254.75.1/32');
    // Calico's own gateway is never chosen over.
    expect(() => chooseServerId(SHAPES.calico.interfaces, { linkLocal: '169.254.1.1/32', linkLocalExplicit: true })).toThrow(/overlaps/);
  });

  it('hands out the pod\'s mask only where the pod has the connected route (CNI ptp gets a /32)', () => {
    const prefix = (pod: Pod) => plan(pod, linksOf(pod), OPTS, GEN).attachments[0]!.ipv4;
    expect(prefix(SHAPES.ptp)).toEqual({ address: '10.22.0.5', prefixlen: 32, gateway: '10.22.0.1' });
    expect(prefix(SHAPES.bridge)).toEqual({ address: '10.25.0.5', prefixlen: 16, gateway: '10.25.0.1' });
    expect(prefix(SHAPES.calico)).toEqual({ address: '10.23.5.7', prefixlen: 32, gateway: '169.254.1.1' });
    expect(prefix(SHAPES.jumbo)).toEqual({ address: '10.26.0.5', prefixlen: 24, gateway: '10.26.0.1' });
  });
});

describe('--forward-port', () => {
  const FWD: PlanOptions = { ...OPTS, forwardPorts: [{ port: 8080, proto: 'tcp' }, { port: 22, proto: 'tcp' }, { port: 53, proto: 'udp' }] };

  it('gives the primary NIC with IPv4 a journaled path from the server identifier: address, host route, permanent neighbour', () => {
    const p = plan(MULTUS, linksOf(MULTUS), FWD, GEN);
    expect(p.forward).toEqual({ nic: 0, from: '169.254.75.1', to: '10.22.0.5' });
    const addr = { family: 'inet', local: '169.254.75.1', prefixlen: 32, scope: 'link', flags: [] };
    const route = { family: 'inet', table: 'main', type: 'unicast', dst: '10.22.0.5/32', dev: 'tap0', protocol: 'static', scope: 'link', prefsrc: '169.254.75.1', flags: [] };
    const neigh = { family: 'inet', dst: '10.22.0.5', lladdr: '0a:58:0a:16:00:05', dev: 'tap0', router: false, proxy: false, permanent: true };
    expect(stepOf(p.steps, 'nic0/forward-path')).toEqual({
      id: 'nic0/forward-path',
      do: [{ op: 'addr-add', dev: 'tap0', addr }, { op: 'route-add', route }, { op: 'neigh-add', neigh }],
      undo: [{ op: 'neigh-del', neigh }, { op: 'route-del', route }, { op: 'addr-del', dev: 'tap0', addr }],
    });
    const ids = p.steps.map((s) => s.id);
    expect(ids.indexOf('nic0/forward-path')).toBeGreaterThan(ids.indexOf('nic3/tap-up'));
    expect(ids.indexOf('nic0/forward-path')).toBeLessThan(ids.indexOf('guard/netdev'));
    // Only that NIC's guard lets the answers up the pod's stack.
    const table = (stepOf(p.steps, 'guard/netdev').do[0] as { table: NftTable }).table;
    expect(table.nics.map((g) => g.forward)).toEqual([{ address: '169.254.75.1', tcp: [8080, 22], udp: [53] }, undefined, undefined, undefined]);
    // On the bridge path the path is on the bridge, whose MAC the answers are sent to.
    const b = plan(SHAPES.ptp, linksOf(SHAPES.ptp), { ...FWD, datapath: 'bridge' }, GEN);
    expect(stepOf(b.steps, 'nic0/forward-path').do[0]).toEqual({ op: 'addr-add', dev: 'br0', addr });
    expect((stepOf(b.steps, 'guard/bridge').do[0] as { table: NftTable }).table.nics[0]!.forward).toEqual({ address: '169.254.75.1', tcp: [8080, 22], udp: [53], bridgeMac: GEN(0).bridgeMac });
  });

  it('goes to the first NIC with IPv4 when the primary has none, and is refused when no NIC has IPv4', () => {
    const noV4 = (i: PodInterface): PodInterface => ({ ...i, addresses: i.addresses.filter((a) => a.family !== 'inet') });
    const pod = podOf(noV4(MULTUS.interfaces[0]!), ...MULTUS.interfaces.slice(1));
    const p = plan(pod, linksOf(pod), FWD, GEN);
    expect(p.forward).toEqual({ nic: 1, from: '169.254.75.1', to: '10.30.0.5' });
    expect(forwardNic(p.attachments)?.interface).toBe('net1');
    const none = podOf(MULTUS.interfaces[3]!);
    expect(() => plan(none, linksOf(none), FWD, GEN)).toThrow(/--forward-port needs a NIC with an IPv4 address/);
    expect(plan(none, linksOf(none), OPTS, GEN).forward).toBeUndefined();
  });
});
