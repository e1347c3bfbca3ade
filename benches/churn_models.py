# Writes churn-models.jsonl in time order: USERS users (default 100,000) in groups of 25; a
# new group starts every 10 minutes, and each user makes 12 views 15 minutes apart (about 3
# hours), then never returns. Each user views the 3 categories of one of 50 interest groups.
# Every fifth user switches to another group after 6 views, to give the detector shifts. With
# the default, event time runs from 2017-11-24T16:00Z for about 28 days.
#
# Usage: python3 benches/churn_models.py [USERS]   (writes churn-models.jsonl in the current folder)
import heapq
import sys

USERS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
T0, GROUP_SIZE, GROUP_GAP, EVENT_GAP, EVENTS_PER_USER = 1511539200, 25, 600, 900, 12
INTEREST_GROUPS = 50


def categories_of(interest):
    return [3 * interest + offset for offset in range(3)]


def user_events(user, start):
    interest = user % INTEREST_GROUPS
    shifted = (interest + 17) % INTEREST_GROUPS
    for k in range(EVENTS_PER_USER):
        group = shifted if user % 5 == 0 and k >= EVENTS_PER_USER // 2 else interest
        category = categories_of(group)[(k + user) % 3]
        ts = start + k * EVENT_GAP
        yield ts, '{"user":%d,"item":%d,"category":%d,"behavior":"view","ts":%d}\n' % (
            user, category * 1000 + k % 7, category, ts)


def group_events(group):
    users = [
        user_events(group * GROUP_SIZE + j, T0 + group * GROUP_GAP + j * 11)
        for j in range(GROUP_SIZE)
    ]
    return heapq.merge(*users)


with open('churn-models.jsonl', 'w') as out:
    groups = (group_events(g) for g in range(USERS // GROUP_SIZE))
    for ts, line in heapq.merge(*groups):
        out.write(line)
