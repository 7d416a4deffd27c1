// The page's groups over the HTTP API (docs/protocol.md, "HTTP API"): the user's groups
// (`GET /v1/groups`, then each one's members and admins), read when the page connects and
// again on every `group_event`; making a group, adding and removing members (admins) and
// leaving. What it read is kept in localStorage, so that the list shows at once after a
// reload. Also the words of the small lines a chat shows for a group's events.

const GROUPS_MAX = 1000; // groups listed; the server's own bound is far higher per shard

export function isGroup(key) {
  return key.startsWith("g:");
}

/** "alice added carol", with the names `name(user)` gives. */
export function eventText({ event, by, user }, name, me) {
  const who = (u) => (u === me ? "you" : name(u));
  const subject = (u) => (u === me ? "You" : name(u));
  switch (event) {
    case "created":
      return `${subject(by)} created the group`;
    case "member_added":
      return `${subject(by)} added ${who(user)}`;
    case "member_removed":
      return `${subject(by)} removed ${who(user)}`;
    case "member_left":
      return `${subject(user)} left`;
    default:
      return `${subject(by)} changed the group`;
  }
}

export class Groups {
  /** `api(method, path, body)` is the client's authenticated JSON call; `onChange(ids)` is
   * called with the groups whose members are known anew. */
  constructor({ api, prefix, onChange }) {
    this.api = api;
    this.key = prefix + "groups";
    this.onChange = onChange;
    this.refreshing = null;
    this.again = false;
    this.stale = new Set(); // groups whose members are to be read again, or "all"
    try {
      // id -> {name, members: [...], admins: [...]}
      this.byId = JSON.parse(localStorage.getItem(this.key)) ?? {};
    } catch {
      this.byId = {};
    }
  }

  save() {
    localStorage.setItem(this.key, JSON.stringify(this.byId));
  }

  ids() {
    return Object.keys(this.byId);
  }

  get(id) {
    return this.byId[id];
  }

  isAdmin(id, user) {
    return this.byId[id]?.admins?.includes(user) ?? false;
  }

  /** Reads the list, and the members of the groups that are new to it or named in
   * `changed` (all of them when it is "all"). One read at a time: a call during a read
   * makes another once it is done, and resolves after that one. */
  refresh(changed = []) {
    if (changed === "all") this.stale = "all";
    else if (this.stale !== "all") for (const id of changed) this.stale.add(id);
    this.again = true;
    this.refreshing ??= (async () => {
      while (this.again) {
        this.again = false;
        const stale = this.stale;
        this.stale = new Set();
        try {
          await this.read(stale);
        } catch {
          // The list stays as it was; read again on the next connection or event.
          if (stale === "all") this.stale = "all";
        }
      }
      this.refreshing = null;
    })();
    return this.refreshing;
  }

  async read(stale) {
    const { groups } = await this.api("GET", "/v1/groups");
    const byId = {};
    const changed = [];
    for (const { group_id: id, name } of groups.slice(0, GROUPS_MAX)) {
      const known = this.byId[id];
      byId[id] = { members: [], admins: [], ...known, name };
      if (!known || stale === "all" || stale.has(id)) changed.push(id);
    }
    for (const id of changed) {
      try {
        const { name, members, admins } = await this.api("GET", `/v1/groups/${id}`);
        byId[id] = { name, members, admins };
      } catch {
        // Left between the list and this read: the next event reads the list again.
        delete byId[id];
      }
    }
    this.byId = byId;
    this.save();
    this.onChange(changed.filter((id) => byId[id]));
  }

  /** Makes a group of the user and `members`; resolves with its id once it is listed. */
  async create(name, members) {
    const { group_id } = await this.api("POST", "/v1/groups", { name, members });
    await this.refresh();
    return group_id;
  }

  async addMember(id, user) {
    await this.api("POST", `/v1/groups/${id}/members`, { user });
    await this.refresh([id]);
  }

  /** Removes `user` (an admin removing a member, or the user leaving). */
  async removeMember(id, user) {
    await this.api("DELETE", `/v1/groups/${id}/members/${encodeURIComponent(user)}`);
    await this.refresh([id]);
  }
}
