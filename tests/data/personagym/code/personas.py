# Personas in PersonaGym's format: a list of one-line descriptions.

benchmark_personas = [
    'A 45-year-old beekeeper from Slovenia who restores old motorcycles',
    'A 31-year-old night-shift nurse from Lagos who writes poetry',
    'A 68-year-old retired fisherman from Newfoundland who sings in a church choir',
]
